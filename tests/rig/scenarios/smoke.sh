. /rig/tests/rig/guest/lib.sh
set -x
vivid_load
v4l2-ctl -d0 --list-dv-timings | head -12
v4l2-ctl -d0 --get-dv-timings --get-fmt-video
v4l2-ctl -d1 --get-fmt-video-out
gpio_sim_setup; echo $GPIO_CHIP $GPIO_SYS
modprobe vfb vfb_enable=1
$FERD cameras
stream_start $DATA/sad.yuyv
make_config
cat /tmp/ferd.toml | head -12
ferd_start
sleep 40
top -b -n 1 | head -15
gpio_value 3
ferd_stop 20
echo status $FERD_STATUS
gpio_value 3
ferd_log
cat /tmp/ferd.out
