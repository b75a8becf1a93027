# vivid is unloaded while ferd streams from it (a camera unplug) and loaded
# again: the event stream says camera_lost, then camera_restored, frames
# are analysed again afterwards, and the daemon is still running.
. /rig/tests/rig/guest/lib.sh
vivid_load || fail "vivid did not load"
gpio_sim_setup || fail "gpio-sim did not come up"
make_config
stream_start "$DATA/neutral.yuyv"
ferd_start
event_wait face_appeared 150 || { ferd_log; fail "no face seen within 150 s"; }
ok "face seen"
stream_stop
rmmod vivid || fail "cannot unload vivid"
[ -e /dev/video0 ] && fail "/dev/video0 still there"
event_wait camera_lost 60 || { ferd_log; fail "no camera_lost event within 60 s"; }
ok "camera_lost after unload"
kill -0 "$FERD_PID" || { ferd_log; fail "ferd died after the unplug"; }
sleep 3
vivid_load || fail "vivid did not load again"
stream_start "$DATA/neutral.yuyv"
event_wait camera_restored 60 || { ferd_log; fail "no camera_restored event within 60 s"; }
ok "camera_restored after reload"
# Frames flow again: a face appears after the restore.
i=0
until sed -n '/"camera_restored"/,$p' "$EVENTS" | grep -q '"face_appeared"'; do
  i=$((i + 1))
  [ "$i" -gt 120 ] && { ferd_log; fail "no face after the restore within 120 s"; }
  sleep 1
done
ok "frames analysed again after the restore"
kill -0 "$FERD_PID" || fail "ferd is not running"
ferd_stop 30
[ "$FERD_STATUS" = 0 ] || { ferd_log; fail "ferd exited with $FERD_STATUS"; }
ok "daemon survived and exited cleanly"
