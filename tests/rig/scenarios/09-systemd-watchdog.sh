# systemd restarts a stuck ferd, and not a healthy one. The guest boots
# systemd as PID 1 (the host's systemd 252; see ../systemd-root.sh) and
# this script runs from rig-scenario.service. ferd runs as the packaged
# unit systemd/ferd.service (Type=notify, WatchdogSec=10s,
# Restart=on-failure, its whole sandbox, User=ferd), on vivid:
#
# 1. healthy for over 2 × WatchdogSec: NRestarts=0, the same MainPID, the
#    watchdog timestamp advancing;
# 2. the camera frozen (vivid drops every buffer, no error): systemd kills
#    ferd for a watchdog timeout ("Failed with result 'watchdog'") and
#    restarts it (NRestarts ≥ 1, a new MainPID);
# 3. thawed: ferd is healthy again and stays up, not restarted, for over
#    2 × WatchdogSec.
# rig-init: systemd
. /rig/tests/rig/guest/lib.sh
WATCHDOG=10
now() { cut -d' ' -f1 /proc/uptime | cut -d. -f1; }
prop() { systemctl show -P "$1" ferd.service; }
state() { echo "ActiveState=$(prop ActiveState) SubState=$(prop SubState) MainPID=$(prop MainPID) NRestarts=$(prop NRestarts) Result=$(prop Result)"; }
flog() {
  state
  echo "--- manager (dmesg)"
  dmesg | grep -i "ferd" | tail -n 30
  echo "--- ferd stderr"
  tail -n 30 /rig/out/ferd.err 2>/dev/null
}
freeze() { v4l2-ctl -d /dev/video0 -c percentage_of_dropped_buffers="$1"; }
# Waits up to $1 s until the watchdog timestamp moves past $2 (a ping
# arrived); prints the new value.
ping_after() {
  i=0
  while [ "$i" -lt "$1" ]; do
    w=$(prop WatchdogTimestampMonotonic)
    [ -n "$w" ] && [ "$w" != 0 ] && [ "$w" != "$2" ] && { echo "$w"; return 0; }
    sleep 1
    i=$((i + 1))
  done
  return 1
}

[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"
[ "$(prop LoadState)" = loaded ] || { systemctl status ferd.service; dmesg | tail -n 20; fail "ferd.service: LoadState=$(prop LoadState)"; }
[ "$(prop Type)" = notify ] && [ "$(prop Restart)" = on-failure ] ||
  fail "ferd.service: Type=$(prop Type) Restart=$(prop Restart)"
# vivid as a plain webcam (its test pattern at the 5 fps ferd asks for),
# not the looped HDMI input of lib.sh's vivid_load, whose 60 fps the
# emulated CPU spends most of its time producing: no face is needed here.
modprobe vivid n_devs=1 node_types=0x1 vid_cap_nr=0 num_inputs=1 input_types=0x0 ||
  fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config
# The unit runs as user ferd with groups video and gpio, and reads
# /etc/ferd/ferd.toml; /tmp is private to it, /var/lib/ferd its own.
# The detector's input is cut to 64×48 (no face is found at that size):
# under emulation a full frame takes seconds, and the watchdog wants a ping
# every 10 s from the first frame on; what is tested here is the service's
# life, not what the models see.
sed -e 's|^output = "/tmp/events.jsonl"|output = "/var/lib/ferd/events.jsonl"|' \
  -e 's|^input_size = .*|input_size = [64, 48]|' /tmp/ferd.toml >/etc/ferd/ferd.toml
grep -q '^output = "/var/lib/ferd/events.jsonl"' /etc/ferd/ferd.toml &&
  grep -q '^input_size = \[64, 48\]' /etc/ferd/ferd.toml || fail "cannot edit the config"
chgrp ferd /etc/ferd/ferd.toml && chmod 0640 /etc/ferd/ferd.toml || fail "cannot give the config to group ferd"
chgrp video /dev/video0 && chmod 0660 /dev/video0 || fail "cannot give /dev/video0 to group video"
chgrp gpio "$GPIO_CHIP" && chmod 0660 "$GPIO_CHIP" || fail "cannot give $GPIO_CHIP to group gpio"

t0=$(now)
systemctl start ferd.service || { flog; fail "systemctl start ferd failed"; }
ok "ferd.service started (READY=1) in $(($(now) - t0)) s: $(state)"
pid0=$(prop MainPID)
[ "$pid0" -gt 0 ] 2>/dev/null || { flog; fail "no MainPID after the start"; }
# (Set from WatchdogSec= when the service starts.)
[ "$(prop WatchdogUSec)" = 10s ] || fail "ferd.service: WatchdogUSec=$(prop WatchdogUSec), expected 10s"
w=$(ping_after 60 0) || { flog; fail "no watchdog ping within 60 s of the start"; }
ok "watchdog pings arriving (MainPID $pid0)"

# 1. Healthy: not restarted for 2.5 × WatchdogSec.
sleep $((WATCHDOG * 5 / 2))
[ "$(prop ActiveState)" = active ] && [ "$(prop NRestarts)" = 0 ] && [ "$(prop MainPID)" = "$pid0" ] ||
  { flog; fail "healthy ferd was restarted or stopped"; }
w2=$(ping_after 15 "$w") || { flog; fail "the watchdog timestamp does not advance while healthy"; }
ok "healthy for $((WATCHDOG * 5 / 2)) s: NRestarts=0, MainPID $pid0 unchanged, pings arriving"

# 2. Frozen: a watchdog timeout and a restart.
freeze 100 || fail "cannot set percentage_of_dropped_buffers=100"
t_freeze=$(now)
i=0
until [ "$(prop NRestarts)" -ge 1 ] 2>/dev/null; do
  i=$((i + 1))
  [ "$i" -gt 90 ] && { flog; fail "no restart within 90 s of the freeze"; }
  sleep 1
done
t_restart=$(now)
dmesg | grep -q "ferd.service: Watchdog timeout (limit 10s)" ||
  { flog; fail "the manager logged no watchdog timeout for ferd.service"; }
dmesg | grep -q "ferd.service: Failed with result 'watchdog'" ||
  { flog; fail "the manager logged no result 'watchdog' for ferd.service"; }
ok "frozen: watchdog timeout, restarted $((t_restart - t_freeze)) s after the freeze (NRestarts=$(prop NRestarts))"
dmesg | grep "ferd.service: \(Watchdog timeout\|Main process exited\|Failed with result\|Scheduled restart\)" |
  head -n 4 | sed 's/^/    /'
i=0
until [ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" != 0 ]; do
  i=$((i + 1))
  [ "$i" -gt 90 ] && { flog; fail "ferd not active again within 90 s of the restart"; }
  sleep 1
done
pid1=$(prop MainPID)
[ "$pid1" != "$pid0" ] || { flog; fail "MainPID unchanged after the restart"; }
ok "restarted: MainPID $pid0 -> $pid1"

# 3. Thawed: healthy again, and left alone.
freeze 0 || fail "cannot set percentage_of_dropped_buffers=0"
t_thaw=$(now)
# The instance started while frozen has its 10 s from READY=1 running
# already and may still be killed if its first frame after the thaw comes
# late (as systemd should): wait until pings arrive, then take the count.
i=0
until w=$(ping_after 5 "$(prop WatchdogTimestampMonotonic)") && [ "$(prop ActiveState)" = active ]; do
  i=$((i + 1))
  [ "$i" -gt 24 ] && { flog; fail "no watchdog ping within 120 s of the thaw"; }
done
n=$(prop NRestarts)
pid2=$(prop MainPID)
ok "thawed: pings again $(($(now) - t_thaw)) s after the thaw (MainPID $pid2, NRestarts=$n)"
sleep $((WATCHDOG * 5 / 2))
[ "$(prop ActiveState)" = active ] && [ "$(prop NRestarts)" = "$n" ] && [ "$(prop MainPID)" = "$pid2" ] ||
  { flog; fail "ferd was restarted after the thaw"; }
ping_after 15 "$w" >/dev/null || { flog; fail "the watchdog timestamp does not advance after the thaw"; }
ok "healthy again for $((WATCHDOG * 5 / 2)) s: NRestarts=$n, MainPID $pid2 unchanged"
systemctl stop ferd.service
[ "$(prop ActiveState)" = inactive ] || { flog; fail "ferd.service not inactive after stop"; }
ok "stopped: $(state)"
