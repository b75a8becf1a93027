# SIGTERM while the distress alert drives the buzzer line: after ferd
# exits, the line reads 0 (every exit path puts outputs in a safe state).
# rig-arch: x86_64 aarch64
. /rig/tests/rig/guest/lib.sh
vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config
stream_start "$DATA/distress.y4m"
ferd_start
event_wait started 120 || { ferd_log; fail "ferd did not start within 120 s"; }
gpio_wait 3 150 1 >/dev/null || { ferd_log; fail "line 3 did not go to 1 within 150 s"; }
ok "alert active: line 3 reads 1"
ferd_stop 30
[ "$FERD_STATUS" = 0 ] || { ferd_log; fail "ferd exited with $FERD_STATUS"; }
[ "$(gpio_value 3)" = 0 ] || fail "line 3 still reads $(gpio_value 3) after exit"
ok "after SIGTERM: line 3 reads 0"
grep -q '"reason":"shutdown"' "$EVENTS" || fail "no alert_cleared with reason shutdown"
ok "alert_cleared (shutdown) in the event stream"
