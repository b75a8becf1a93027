# Helpers for the rig's guest scenarios (sourced; busybox sh).
# Each scenario prints what it checks and exits non-zero on failure.

FERD=/rig/ferd
CONFIG=/rig/tests/rig/ferd-rig.toml
EVENTS=/tmp/events.jsonl
DATA=/rig/data

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

# vivid with one HDMI capture input looped from one HDMI output, both at
# 640×480 (a standard DMT timing), output YUYV.
vivid_load() {
  modprobe vivid n_devs=1 node_types=0x101 vid_cap_nr=0 vid_out_nr=1 \
    num_inputs=1 input_types=0x3 num_outputs=1 output_types=0x1 ||
    { echo "vivid: modprobe failed"; return 1; }
  /rig/bin/vivid_loop /dev/video0 /dev/video1 640 480 ||
    { echo "vivid: cannot set up the loop"; return 1; }
}

# Shows one frame ($1, a one-frame clip) on the vivid output until
# stream_stop, in the background; its pid in STREAM_PID.
stream_start() {
  /rig/bin/vout /dev/video1 "$1" 1 >/tmp/vout.out 2>&1 &
  STREAM_PID=$!
}

# Plays the clip $1 into the vivid output at $2 frames per second, in the
# background (the last frame stays after the end); its pid in STREAM_PID.
play_start() {
  /rig/bin/vout /dev/video1 "$1" "$2" >/tmp/vout.out 2>&1 &
  STREAM_PID=$!
}

stream_stop() {
  [ -n "${STREAM_PID:-}" ] && kill "$STREAM_PID" 2>/dev/null && wait "$STREAM_PID" 2>/dev/null
  STREAM_PID=""
}

# The GPIO chip under test; sets GPIO_CHIP (the /dev node) and defines
# gpio_value LINE, which prints the level the line is at (0 or 1).
#
# x86_64: gpio-sim, one chip with 8 lines labelled "rig"; values read back
# from its sysfs directory (sim_gpioN/value).
# aarch64: the board's PL061 controller (gpiochip0, 8 lines; nothing claims
# them while gpio-keys is not loaded). Values come from the driver, which
# reads the controller's data register: through debugfs while a program
# holds the line, else by exporting it to sysfs for one read (export keeps
# the line's direction and level) and unexporting it again.
gpio_setup() {
  case "$(uname -m)" in
    x86_64) gpio_sim_setup ;;
    aarch64) gpio_pl061_setup ;;
    *) echo "gpio_setup: no GPIO chip for $(uname -m)"; return 1 ;;
  esac
}

gpio_sim_setup() {
  modprobe gpio-sim || return 1
  d=/sys/kernel/config/gpio-sim/rig
  mkdir -p "$d/bank0" || return 1
  echo 8 >"$d/bank0/num_lines"
  echo rig >"$d/bank0/label"
  echo 1 >"$d/live" || return 1
  GPIO_SYS=$(ls -d /sys/devices/platform/gpio-sim.*/gpiochip* | head -n 1)
  GPIO_CHIP=/dev/$(basename "$GPIO_SYS")
  [ -c "$GPIO_CHIP" ] || return 1
  gpio_value() { cat "$GPIO_SYS/sim_gpio$1/value"; }
}

gpio_pl061_setup() {
  grep -q " /sys/kernel/debug " /proc/mounts || mount -t debugfs none /sys/kernel/debug || return 1
  # debugfs lists the chip as "gpiochip0: GPIOs 504-511, parent: amba/9030000.pl061, ..."
  GPIO_BASE=$(sed -n 's/^gpiochip0: GPIOs \([0-9]*\)-[0-9]*, parent: .*pl061.*/\1/p' /sys/kernel/debug/gpio)
  [ -n "$GPIO_BASE" ] || { cat /sys/kernel/debug/gpio; return 1; }
  GPIO_CHIP=/dev/gpiochip0
  [ -c "$GPIO_CHIP" ] || return 1
  gpio_value() {
    # A claimed line: " gpio-507 (                    |buzzer   ) out hi"
    n=$((GPIO_BASE + $1))
    v=$(grep "^ gpio-$n " /sys/kernel/debug/gpio)
    case "${v##*)}" in
      *" hi"*) echo 1 ;;
      *" lo"*) echo 0 ;;
      *)
        echo "$n" >/sys/class/gpio/export || return 1
        cat "/sys/class/gpio/gpio$n/value"
        echo "$n" >/sys/class/gpio/unexport
        ;;
    esac
  }
}

# A framebuffer at /dev/fb0: vfb on x86_64 (640×480, 8 bpp); on aarch64
# the virtio-gpu device's DRM framebuffer (1280×800, 32 bpp), since
# Debian's arm64 kernel has no vfb.
fb_setup() {
  case "$(uname -m)" in
    x86_64) modprobe vfb vfb_enable=1 || { echo "vfb did not load"; return 1; } ;;
    aarch64) modprobe virtio-gpu || { echo "virtio-gpu did not load"; return 1; } ;;
    *) echo "fb_setup: no framebuffer for $(uname -m)"; return 1 ;;
  esac
  i=0
  until [ -c /dev/fb0 ]; do
    i=$((i + 1))
    [ "$i" -gt 50 ] && { echo "no /dev/fb0"; return 1; }
    sleep 0.1
  done
}

# Waits up to $2 seconds until line $1 reads $3; prints the seconds taken.
# With ferd running, call it only once ferd has claimed its lines (the
# `started` event): on aarch64, reading an unclaimed line exports it for a
# moment, which would make ferd's own request of that line fail.
gpio_wait() {
  i=0
  while [ "$i" -lt "$(($2 * 5))" ]; do
    [ "$(gpio_value "$1")" = "$3" ] && { echo $((i / 5)); return 0; }
    sleep 0.2
    i=$((i + 1))
  done
  return 1
}

# Unloads vivid, retrying for up to $1 seconds while it is still in use;
# returns 1 if it never could (whoever holds the device kept it open).
vivid_unload() {
  i=0
  until rmmod vivid 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -gt "$(($1 * 5))" ] && return 1
    sleep 0.2
  done
}

# Waits up to $2 seconds for an event of type $1 in the event file.
event_wait() {
  i=0
  while [ "$i" -lt "$2" ]; do
    grep -q "\"type\":\"$1\"" "$EVENTS" 2>/dev/null && return 0
    sleep 1
    i=$((i + 1))
  done
  return 1
}

# The rig config with the gpio chip found at run time.
make_config() {
  sed "s|/dev/gpiochip0|$GPIO_CHIP|" "$CONFIG" >/tmp/ferd.toml
  # Model paths are relative to the config's directory.
  sed -i 's|"../../models/|"/rig/models/|' /tmp/ferd.toml
}

# Starts the daemon in the background; its pid in FERD_PID.
ferd_start() {
  rm -f "$EVENTS"
  RUST_LOG=${RUST_LOG:-info} "$FERD" run --config /tmp/ferd.toml "$@" >/tmp/ferd.out 2>/tmp/ferd.err &
  FERD_PID=$!
}

# Sends SIGTERM and waits up to $1 seconds for exit; status in FERD_STATUS.
ferd_stop() {
  kill -TERM "$FERD_PID"
  i=0
  while kill -0 "$FERD_PID" 2>/dev/null; do
    [ "$i" -ge "$(($1 * 5))" ] && { kill -KILL "$FERD_PID"; break; }
    sleep 0.2
    i=$((i + 1))
  done
  wait "$FERD_PID"
  FERD_STATUS=$?
  # The event stream stays with the results, for a look after the run.
  cp "$EVENTS" "$OUT/$(basename "$0" .sh).events" 2>/dev/null || true
}

# On failure, the daemon's stderr tail helps.
ferd_log() { echo "--- ferd stderr"; tail -n 30 /tmp/ferd.err; echo "--- events"; cut -c1-160 "$EVENTS" 2>/dev/null | tail -n 30; }
