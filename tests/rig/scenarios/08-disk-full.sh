# The event log's disk fills up while ferd runs, and gets space back. The
# [events] output file lives on a 64 KiB tmpfs; once ferd has written to
# it, a padding line and dd fill the rest (see below). The face on the
# camera flips between distress and neutral, so events keep coming
# (expression, alert_raised, alert_cleared).
# What must hold:
# - analysis goes on while the disk is full: the buzzer line 3 follows the
#   face (1, then 0) after writes have failed, and the daemon stays up;
# - ferd says so once: a warning naming the file and the error (No space
#   left on device), not one per event;
# - the file holds whole JSON lines only: a line torn by the full disk is
#   taken back out of the file;
# - once the filler is removed, events are written again: an
#   events_dropped line with the count, logged as "writing events to FILE
#   again, N events dropped", and the events after it;
# - at exit the summary counts the same N ("N events could not be
#   written") and the exit status is 1, as documented for lost events.
# x86_64 only: nothing in it is specific to an architecture, and it
# analyses about 13 frames (three alert changes). Measured on a 2-core host
# loaded by other builds (frames taking 40 to 75 s): 800 s, with
# RIG_TIMEOUT raised; at the CI machine's 4 s a frame about 1.5 minutes.
# rig-arch: x86_64
. /rig/tests/rig/guest/lib.sh
DISK=/tmp/evdisk
EVENTS=$DISK/events.jsonl
vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config
mkdir -p "$DISK" && mount -t tmpfs -o size=64k evdisk "$DISK" || fail "cannot mount a tmpfs at $DISK"
sed -i "s|^output = .*|output = \"$EVENTS\"|" /tmp/ferd.toml
grep -q "^output = \"$EVENTS\"" /tmp/ferd.toml || fail "the config's [events] output was not set"

# Shows the face $1 (distress or neutral) until line 3 reads $2 and ferd
# has logged the alert's rise or fall (not the line going to 0 because a
# frame took longer than degraded_after under a loaded host).
raised=0 cleared=0
show() {
  stream_stop
  stream_start "$DATA/$1.y4m"
  gpio_wait 3 150 "$2" >/dev/null || { ferd_log; fail "$3: line 3 did not go to $2 within 150 s of the $1 face"; }
  if [ "$2" = 1 ]; then
    raised=$((raised + 1)) want="alert distress raised" n=$raised
  else
    cleared=$((cleared + 1)) want="alert distress cleared (condition)" n=$cleared
  fi
  i=0
  until [ "$(grep -c "$want" /tmp/ferd.err)" -ge "$n" ]; do
    i=$((i + 1))
    [ "$i" -gt 150 ] && { ferd_log; fail "$3: line 3 reads $2 but ferd did not log '$want' ($n times)"; }
    sleep 1
  done
}
# Every line of the event file is one whole JSON object (busybox has no
# JSON parser: whole means it starts with {"v":1, and ends with }).
whole_lines() {
  bad=$(grep -vc '^{"v":1,.*}$' "$EVENTS")
  [ "$bad" = 0 ] || { grep -vn '^{"v":1,.*}$' "$EVENTS" | cut -c1-200; fail "$1: $bad torn or foreign lines in $EVENTS"; }
}

t0=$(date +%s)
stream_start "$DATA/neutral.y4m"
ferd_start
event_wait face_appeared 150 || { ferd_log; fail "no face seen within 150 s"; }
# tmpfs hands out whole 4 KiB pages: the events file's last page takes
# lines until it is full, whatever dd leaves. A padding line (a JSON object
# of type rig_padding, appended whole) leaves it 40 bytes, less than
# any event's line, so the next write is torn at once and must be taken
# back. (Should ferd write in between, the room is larger and a write fails
# only a flip later.)
size=$(wc -c <"$EVENTS")
pad=$((4096 - size % 4096 - 38 - 40))
[ "$pad" -lt 1 ] && pad=$((pad + 4096))
printf '{"v":1,"type":"rig_padding","pad":"%s"}\n' "$(head -c "$pad" /dev/zero | tr '\000' x)" >>"$EVENTS"
dd if=/dev/zero of="$DISK/fill" bs=1024 2>/dev/null
ok "face seen, $size bytes of events written, padded to $(wc -c <"$EVENTS"); $DISK filled: $(df -k "$DISK" | awk 'NR==2{print $4}') KiB free"

# Distress, then neutral, until a write has failed before the alert rose;
# the fall to neutral that follows shows analysis going on after it.
flips=0
failed=0
while :; do
  flips=$((flips + 1))
  [ "$flips" -gt 4 ] && { ferd_log; fail "no failed write logged after 4 flips on a full disk"; }
  show distress 1 "flip $flips on the full disk"
  grep -q "cannot write events to $EVENTS: No space left on device" /tmp/ferd.err && failed=1
  show neutral 0 "flip $flips on the full disk"
  [ "$failed" = 1 ] && break
done
kill -0 "$FERD_PID" || { ferd_log; fail "ferd died on the full disk"; }
ok "after $flips flip(s): $(grep -m 1 'cannot write events' /tmp/ferd.err)"
ok "analysis goes on with the disk full: line 3 went back to 0 after the failed write (at second $(($(date +%s) - t0)))"
n=$(grep -c 'cannot write events' /tmp/ferd.err)
[ "$n" = 1 ] || { ferd_log; fail "$n warnings about the full disk, expected one"; }
whole_lines "on the full disk"
ok "one warning; $EVENTS holds whole lines only ($(wc -l <"$EVENTS") lines)"

lines_before=$(wc -l <"$EVENTS")
rm "$DISK/fill"
show distress 1 "after space came back"
event_wait events_dropped 30 || { ferd_log; fail "no events_dropped event within 30 s of the space coming back"; }
[ "$(grep -c '"type":"events_dropped"' "$EVENTS")" = 1 ] || { ferd_log; fail "more than one events_dropped for one outage"; }
dropped=$(sed -n 's/.*"type":"events_dropped".*"count":\([0-9]*\).*/\1/p' "$EVENTS")
[ -n "$dropped" ] && [ "$dropped" -gt 0 ] || { ferd_log; fail "events_dropped without a count: $(grep events_dropped "$EVENTS")"; }
grep -q "writing events to $EVENTS again, $dropped events dropped" /tmp/ferd.err ||
  { ferd_log; fail "no log line 'writing events to $EVENTS again, $dropped events dropped'"; }
sed -n "$((lines_before + 1)),\$p" "$EVENTS" | grep -q '"type":"alert_raised"' ||
  { ferd_log; fail "no alert_raised written after the space came back"; }
whole_lines "after the space came back"
ok "writing again: events_dropped count $dropped, logged, new events in the file"

ferd_stop 30
[ "$FERD_STATUS" = 1 ] || { ferd_log; fail "ferd exited with $FERD_STATUS, expected 1 (events were lost)"; }
grep -q "$dropped events could not be written" /tmp/ferd.err ||
  { ferd_log; fail "the exit summary does not say '$dropped events could not be written'"; }
[ "$(gpio_value 3)" = 0 ] || fail "line 3 reads 1 after exit"
ok "exit status 1 with '$dropped events could not be written' (at second $(($(date +%s) - t0)))"
