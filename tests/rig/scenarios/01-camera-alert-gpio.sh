# examples/demo.y4m plays into vivid's video output (scaled to 640×480
# YUYV by vout, slowed to one frame every 2 seconds since inference under
# emulation takes several seconds a frame) and loops into /dev/video0; ferd
# captures it, and the distress alert (the face looks sad, fearful and
# angry from clip frame 15 to 54) drives the buzzer line: read back, it
# goes to 1, and back to 0 once the face smiles.
#
# Runs on both guests: x86_64 (gpio-sim line 3) and aarch64 (Cortex-A72,
# the board's PL061 line 3).
# rig-arch: x86_64 aarch64
. /rig/tests/rig/guest/lib.sh
vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config
[ "$(gpio_value 3)" = 0 ] || fail "line 3 is not 0 before ferd starts"
# `ferd cameras` lists vivid's capture node (its HDMI input offers a size
# range, which must be printed as one, not expanded).
"$FERD" cameras >/tmp/cameras.txt 2>&1 || { cat /tmp/cameras.txt; fail "ferd cameras failed"; }
grep -q "^/dev/video0: vivid" /tmp/cameras.txt && grep -q "YUYV" /tmp/cameras.txt ||
  { cat /tmp/cameras.txt; fail "ferd cameras does not list /dev/video0 with YUYV"; }
ok "ferd cameras: $(head -n 2 /tmp/cameras.txt | tr '\n' ' ')"
ferd_start
event_wait started 120 || { ferd_log; fail "ferd did not start within 120 s"; }
play_start "$DATA/demo.y4m" 0.5
t0=$(date +%s)
gpio_wait 3 200 1 >/dev/null || { ferd_log; fail "line 3 did not go to 1 within 200 s of the clip"; }
t1=$(date +%s)
ok "buzzer line 3 reads 1 at clip second $((t1 - t0)) (distress)"
gpio_wait 3 200 0 >/dev/null || { ferd_log; fail "line 3 did not go back to 0 within 200 s"; }
t2=$(date +%s)
ok "buzzer line 3 reads 0 at clip second $((t2 - t0)) (the face smiles)"
stream_stop
ferd_stop 30
[ "$FERD_STATUS" = 0 ] || { ferd_log; fail "ferd exited with $FERD_STATUS"; }
grep -q '"type":"alert_raised".*"alert":"distress"' "$EVENTS" || fail "no alert_raised event"
grep -q '"type":"alert_cleared".*"reason":"condition"' "$EVENTS" || fail "no alert_cleared (condition) event"
ok "alert_raised and alert_cleared (condition) in the event stream; ferd exited cleanly"
