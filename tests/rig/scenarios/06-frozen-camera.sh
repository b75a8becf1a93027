# A frozen camera: the device stays open and streaming but no buffer comes
# back, and no error either. vivid's "Percentage of Dropped Buffers" at 100
# drops every buffer (a frozen USB camera or a wedged driver looks the
# same to ferd). ferd runs under a stand-in notify socket (notify_log, with
# WATCHDOG_USEC set as systemd would) while the distress alert drives the
# buzzer line. Checks:
#
# - `degraded` (no_frames) within health.degraded_after + one tick (a
#   quarter of degraded_after, at most 1 s) of the last frame analysed,
#   the tell-tale line 4 at 1 and the buzzer line 3 at 0;
# - no watchdog ping (WATCHDOG=1) while frozen, so systemd would restart
#   ferd;
# - the control back at 0: `recovered` (no_frames), line 4 at 0, the alert
#   and the pings back;
# - frozen again, SIGTERM still stops ferd promptly and cleanly (the
#   capture thread is blocked in the driver then).
. /rig/tests/rig/guest/lib.sh
DEGRADED_AFTER=20
# The analysis loop's tick: degraded_after / 4, at most 1 s (pipeline::run).
TICK=1
NOTIFY=/run/notify.sock
NLOG=/tmp/notify.log
now() { cut -d' ' -f1 /proc/uptime; }
# Seconds (float) from $1 to $2.
span() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# Whether float $1 <= float $2.
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
# Watchdog pings logged after time $1 (and before $2, if given).
pings_between() {
  awk -v a="$1" -v b="${2:-1e12}" '/WATCHDOG=1/ && $1 > a && $1 < b { n++ } END { print n + 0 }' "$NLOG"
}
# Waits up to $2 seconds for a watchdog ping after time $1.
ping_wait() {
  i=0
  while [ "$(pings_between "$1")" = 0 ]; do
    i=$((i + 1))
    [ "$i" -gt "$(($2 * 5))" ] && return 1
    sleep 0.2
  done
}
last_ping() { awk '/WATCHDOG=1/ { t = $1 } END { print t }' "$NLOG"; }
# Waits up to $3 seconds for an event line matching the regex $1 after the
# first $2 lines; prints the uptime when it was seen.
event_seen_after() {
  i=0
  while [ "$i" -lt "$(($3 * 5))" ]; do
    if tail -n +"$(($2 + 1))" "$EVENTS" 2>/dev/null | grep -q "$1"; then
      now
      return 0
    fi
    sleep 0.2
    i=$((i + 1))
  done
  return 1
}
freeze() { v4l2-ctl -d /dev/video0 -c percentage_of_dropped_buffers="$1"; }

vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config
sed -i "s/^degraded_after = .*/degraded_after = $DEGRADED_AFTER.0/" /tmp/ferd.toml
grep -q "^degraded_after = $DEGRADED_AFTER.0" /tmp/ferd.toml || fail "cannot set degraded_after"
v4l2-ctl -d /dev/video0 -l | grep -q "percentage_of_dropped_buffers" ||
  { v4l2-ctl -d /dev/video0 -l; fail "vivid has no percentage_of_dropped_buffers control"; }

/rig/bin/notify_log "$NOTIFY" "$NLOG" 2>/tmp/notify_log.err &
NLOG_PID=$!
i=0
until [ -S "$NOTIFY" ]; do
  i=$((i + 1))
  [ "$i" -gt 50 ] && { cat /tmp/notify_log.err; fail "notify_log did not bind $NOTIFY within 10 s"; }
  sleep 0.2
done
stream_start "$DATA/distress.y4m"
rm -f "$EVENTS"
# As systemd starts it: NOTIFY_SOCKET, and WATCHDOG_USEC with WATCHDOG_PID
# naming ferd itself (exec keeps the shell's pid). 1 s: pings at most
# every 0.5 s, i.e. after every frame analysed under emulation, so the
# last ping marks the end of the last frame's analysis.
NOTIFY_SOCKET=$NOTIFY WATCHDOG_USEC=1000000 RUST_LOG=info \
  sh -c 'WATCHDOG_PID=$$ exec "$0" "$@"' "$FERD" run --config /tmp/ferd.toml \
  >/tmp/ferd.out 2>/tmp/ferd.err &
FERD_PID=$!
# On failure: ferd's log, the events and the notify log.
flog() { ferd_log; echo "--- notify log"; tail -n 20 "$NLOG"; }
event_wait started 120 || { flog; fail "ferd did not start within 120 s"; }
grep -q "READY=1" "$NLOG" || { flog; fail "no READY=1 on the notify socket"; }
gpio_wait 3 150 1 >/dev/null || { flog; fail "buzzer line 3 did not go to 1 within 150 s"; }
ok "alert active: buzzer line 3 reads 1"
ping_wait "$(now)" 120 || { flog; fail "no watchdog ping within 120 s while frames flow"; }
ok "frames flow: watchdog pings arrive"

# 1. Freeze.
lines=$(wc -l <"$EVENTS")
freeze 100 || fail "cannot set percentage_of_dropped_buffers=100"
t_freeze=$(now)
t_deg=$(event_seen_after '"type":"degraded".*"reason":"no_frames"' "$lines" $((DEGRADED_AFTER + 60))) ||
  { flog; fail "no degraded (no_frames) within $((DEGRADED_AFTER + 60)) s of the freeze"; }
t_last=$(last_ping)
# The last ping follows the analysis of the last frame taken before the
# freeze, so the time from it bounds ferd's own detection time.
after_frame=$(span "$t_last" "$t_deg")
ok "degraded (no_frames) $(span "$t_freeze" "$t_deg") s after the freeze, $after_frame s after the last frame analysed (last ping)"
# + 1 s: the pings' own spacing (0.5 s), the event poll's step (0.2 s)
# and the shell's latency under emulation.
le "$after_frame" "$((DEGRADED_AFTER + TICK + 1))" ||
  { flog; fail "detection took $after_frame s after the last frame, over degraded_after + tick = $((DEGRADED_AFTER + TICK)) s"; }
ok "detected within degraded_after + tick ($DEGRADED_AFTER + $TICK s)"
gpio_wait 4 5 1 >/dev/null || { flog; fail "tell-tale line 4 not at 1 within 5 s of degraded"; }
gpio_wait 3 5 0 >/dev/null || { flog; fail "buzzer line 3 not at 0 within 5 s of degraded"; }
grep -q '"type":"alert_cleared".*"reason":"degraded"' "$EVENTS" ||
  { flog; fail "no alert_cleared (degraded) event"; }
ok "degraded: tell-tale line 4 reads 1, buzzer line 3 reads 0, alert_cleared (degraded)"
# Stay frozen a while: no ping at all from the last frame on.
sleep 10
t_unfreeze=$(now)
n=$(pings_between "$t_last")
[ "$n" = 0 ] || { flog; fail "$n watchdog pings while frozen"; }
ok "no watchdog ping for $(span "$t_last" "$t_unfreeze") s while frozen (WATCHDOG_USEC 1 s)"
kill -0 "$FERD_PID" || { flog; fail "ferd died while frozen"; }

# 2. Thaw.
lines=$(wc -l <"$EVENTS")
freeze 0 || fail "cannot set percentage_of_dropped_buffers=0"
t_rec=$(event_seen_after '"type":"recovered".*"reason":"no_frames"' "$lines" 120) ||
  { flog; fail "no recovered (no_frames) within 120 s of the thaw"; }
ok "recovered (no_frames) $(span "$t_unfreeze" "$t_rec") s after the thaw"
gpio_wait 4 10 0 >/dev/null || { flog; fail "tell-tale line 4 not back at 0 within 10 s"; }
ping_wait "$t_unfreeze" 120 || { flog; fail "no watchdog ping within 120 s of the thaw"; }
gpio_wait 3 300 1 >/dev/null || { flog; fail "buzzer line 3 not back at 1 within 300 s"; }
ok "after the thaw: tell-tale 0, watchdog pings again, buzzer 1 (alert raised again)"

# 3. Frozen again, then SIGTERM: the capture thread waits in the driver,
#    yet ferd stops within systemd's TimeoutStopSec (10 s), clears its
#    outputs and says STOPPING.
lines=$(wc -l <"$EVENTS")
freeze 100 || fail "cannot set percentage_of_dropped_buffers=100"
event_seen_after '"type":"degraded".*"reason":"no_frames"' "$lines" $((DEGRADED_AFTER + 60)) >/dev/null ||
  { flog; fail "no second degraded (no_frames)"; }
t_term=$(now)
kill -TERM "$FERD_PID"
i=0
while kill -0 "$FERD_PID" 2>/dev/null; do
  [ "$i" -ge 50 ] && { flog; kill -KILL "$FERD_PID"; fail "ferd still running 10 s after SIGTERM with the camera frozen"; }
  sleep 0.2
  i=$((i + 1))
done
wait "$FERD_PID"
status=$?
t_gone=$(now)
cp "$EVENTS" "$OUT/06-frozen-camera.events" 2>/dev/null
cp "$NLOG" "$OUT/06-frozen-camera.notify" 2>/dev/null
[ "$status" = 0 ] || { flog; fail "ferd exited with $status after SIGTERM while frozen"; }
grep -q "STOPPING=1" "$NLOG" || { flog; fail "no STOPPING=1"; }
[ "$(gpio_value 3)" = 0 ] || fail "buzzer line 3 reads $(gpio_value 3) after exit"
tail -n 1 "$EVENTS" | grep -q '"type":"status"' || { flog; fail "the last event is not the final status"; }
ok "SIGTERM while frozen: exit 0 after $(span "$t_term" "$t_gone") s, STOPPING=1, final status event, line 3 reads 0"
freeze 0
stream_stop
kill "$NLOG_PID"
