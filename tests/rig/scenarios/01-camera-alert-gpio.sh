# Face frames from examples/demo.y4m stream into vivid's output and loop
# into /dev/video0; ferd captures them, and the distress alert drives the
# buzzer line of gpio-sim: read back from sysfs, it goes to 1 while the sad
# face is shown and back to 0 after the face turns happy.
. /rig/tests/rig/guest/lib.sh
vivid_load || fail "vivid did not load"
gpio_sim_setup || fail "gpio-sim did not come up"
make_config
[ "$(gpio_value 3)" = 0 ] || fail "line 3 is not 0 before ferd starts"
stream_start "$DATA/sad.yuyv"
ferd_start
s=$(gpio_wait 3 150 1) || { ferd_log; fail "line 3 did not go to 1 within 150 s of a sad face"; }
ok "sad face: buzzer line 3 reads 1 after ${s}s"
stream_stop
stream_start "$DATA/happy.yuyv"
s=$(gpio_wait 3 120 0) || { ferd_log; fail "line 3 did not go back to 0 within 120 s of a happy face"; }
ok "happy face: buzzer line 3 reads 0 after ${s}s"
ferd_stop 30
[ "$FERD_STATUS" = 0 ] || { ferd_log; fail "ferd exited with $FERD_STATUS"; }
grep -q '"type":"alert_raised".*"alert":"distress"' "$EVENTS" || fail "no alert_raised event"
ok "ferd exited cleanly"
