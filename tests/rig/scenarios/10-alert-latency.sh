# The alert latency, camera to buzzer, measured from outside ferd: vout
# shows the neutral face, then switches the camera's picture to the
# distress face and back, STEPS times, each switch once the buzzer line has
# followed the last one. For each rising edge of line 3:
#
# - beyond the hold: the edge's time less (the moment the distress picture
#   went to the camera + the rule's hold). What a user waits for past the
#   hold they configured: the wait for the next analysed frame, smoothing,
#   inference, the GPIO driver's 20 ms tick.
# - capture to edge: the edge's time less the driver timestamp of the frame
#   whose analysis raised the alert (ferd logs its stream's first stamp on
#   CLOCK_MONOTONIC; the alert_raised event's `t` counts from it).
#
# All three clocks are the guest's CLOCK_MONOTONIC: vout's "shown" lines,
# gpio_edges (polls gpio-sim's view of the line every millisecond, another
# process than ferd), and vivid's buffer timestamps. Prints median and max
# of both; checks that every step raised exactly one alert and one edge, no
# alert was raised by a frame captured before the hold could have passed,
# and no edge came before its frame was captured. The times are those of
# this emulated guest (TCG, one vCPU), many times slower than a board:
# docs/PERFORMANCE.md reads them. No timing is asserted. About 7 minutes
# (not in CI's rig step, whose budget it would break); on a busy machine
# it can pass the default 600 s guest limit, so:
#   RIG_TIMEOUT=900 tests/rig/run-all.sh 10-alert-latency
# rig-arch: x86_64
. /rig/tests/rig/guest/lib.sh
STEPS=5
vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config
hold=$(sed -n 's/^hold = \([0-9.]*\).*/\1/p' /tmp/ferd.toml | head -n 1)
[ -n "$hold" ] || fail "no rule hold in the rig config"
/rig/bin/vout /dev/video1 "$DATA/steps.y4m" step >/tmp/vout.out 2>&1 &
STREAM_PID=$!
ferd_start
event_wait started 120 || { ferd_log; fail "ferd did not start within 120 s"; }
event_wait expression 120 || { ferd_log; fail "no expression event for the neutral face within 120 s"; }
[ "$(gpio_value 3)" = 0 ] || fail "line 3 reads 1 on the neutral face"
/rig/bin/gpio_edges "$GPIO_SYS/sim_gpio3/value" >/tmp/edges.txt 2>&1 &
EDGES_PID=$!
# (Not `i`: the helpers count with it.)
step=0
while [ "$step" -lt "$STEPS" ]; do
  step=$((step + 1))
  kill -USR1 "$STREAM_PID"
  gpio_wait 3 120 1 >/dev/null ||
    { cat /tmp/vout.out; ferd_log; fail "step $step: line 3 did not go to 1 within 120 s of the distress face"; }
  kill -USR1 "$STREAM_PID"
  gpio_wait 3 120 0 >/dev/null ||
    { cat /tmp/vout.out; ferd_log; fail "step $step: line 3 did not go back to 0 within 120 s"; }
done
kill "$EDGES_PID"
wait "$EDGES_PID"
stream_stop
ferd_stop 30
[ "$FERD_STATUS" = 0 ] || { ferd_log; fail "ferd exited with $FERD_STATUS"; }
ok "$STEPS steps: the buzzer line followed each (neutral → distress → neutral)"

# The four series, one number per line, in step order.
origins=$(sed -n 's/.*stamped \([0-9.]*\) s on CLOCK_MONOTONIC.*/\1/p' /tmp/ferd.err)
[ "$(echo "$origins" | grep -c .)" = 1 ] ||
  { ferd_log; fail "expected one stream origin on CLOCK_MONOTONIC in ferd's log, got: $origins"; }
sed -n 's/^shown 1 //p' /tmp/vout.out >/tmp/onsets.txt
sed -n 's/^level 1 //p' /tmp/edges.txt >/tmp/rises.txt
grep '"type":"alert_raised"' "$EVENTS" | sed -n 's/.*"t":\([0-9.e+-]*\),.*/\1/p' >/tmp/raised.txt
for f in onsets rises raised; do
  [ "$(grep -c . /tmp/$f.txt)" = "$STEPS" ] ||
    { cat /tmp/vout.out /tmp/edges.txt; ferd_log; fail "$f: $(grep -c . /tmp/$f.txt) lines for $STEPS steps"; }
done

# Per step: beyond-hold and capture-to-edge latency in ms, or a failure.
paste /tmp/onsets.txt /tmp/rises.txt /tmp/raised.txt | awk -v o="$origins" -v hold="$hold" '
  {
    onset = $1; edge = $2; captured = o + $3
    # vivid stamps a frame at most one capture period (200 ms at 5 fps)
    # before the output it copies could have changed.
    if (captured < onset + hold - 0.25) {
      printf "step %d: alert raised by a frame captured %.3f s after the switch, before the %.1f s hold\n", NR, captured - onset, hold
      bad = 1
    }
    if (edge <= captured) {
      printf "step %d: the edge (%.6f) came before the frame was captured (%.6f)\n", NR, edge, captured
      bad = 1
    }
    printf "%.1f %.1f\n", (edge - onset - hold) * 1000, (edge - captured) * 1000 > "/tmp/latency.txt"
  }
  END { exit bad }' || fail "latency series inconsistent (clocks or rule timing)"

# "median M ms, max X ms" of column $1 of /tmp/latency.txt.
stats() {
  cut -d' ' -f"$1" /tmp/latency.txt | sort -n | awk '
    { v[NR] = $1 }
    END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "median %.0f ms, max %.0f ms", m, v[NR] }'
}
ok "latency beyond the ${hold} s hold (distress on camera → line 3 high): $(stats 1) over $STEPS steps"
ok "capture to edge (raising frame's driver timestamp → line 3 high): $(stats 2)"
# The guest's pace, to read the figures by: the shutdown status event's
# analysed frames over its stream time.
grep '"type":"status"' "$EVENTS" | tail -n 1 |
  sed -n 's/.*"frames":\([0-9]*\),.*"t":\([0-9.]*\),.*/\1 \2/p' |
  awk '$1 > 0 { printf "ok: pace: %d frames analysed in %.0f s of stream time, %.2f s a frame\n", $1, $2, $2 / $1 }'
ok "per step (beyond hold, capture to edge, ms): $(tr '\n' ';' </tmp/latency.txt)"
cp /tmp/latency.txt "$OUT/10-alert-latency.latency"
