set -x
uname -r
modprobe vivid n_devs=1 node_types=0x101 vid_cap_nr=0 vid_out_nr=1 num_inputs=1 input_types=0x3 num_outputs=1 output_types=0x1
modprobe vfb vfb_enable=1
modprobe gpio-sim
ls -la /dev/video* /dev/fb* /dev/gpio* 
v4l2-ctl -d0 --list-formats --list-dv-timings | head -50
v4l2-ctl -d1 --list-formats-out
ldd /rig/ferd || true
/rig/ferd --version
/rig/ferd cameras
dmesg | tail -20
