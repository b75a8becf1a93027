# A GPIO chip or line that the configuration names is missing at start (a
# wrong chip number, a board whose controller has fewer lines): ferd must
# refuse to run, at once, with an error naming the output, the chip and the
# line, and exit with status 5 ("an input or output cannot be opened at
# start", see README), with no GPIO line left driven. Two runs against the
# real chip (gpio-sim on x86_64, the PL061 on aarch64; both have 8 lines):
# - the buzzer on /dev/gpiochip9, a chip that does not exist;
# - the tell-tale on line 8, one past the chip's last line; the buzzer's
#   line 3, requested before it, must be let go at 0.
# No frame is analysed, so it is quick on both guests: measured on a loaded
# 2-core host, 59 and 89 s on x86_64, 28 and 53 s on aarch64 (boot
# included; the models load before the outputs open, 8 to 45 s a run).
# rig-arch: x86_64 aarch64
. /rig/tests/rig/guest/lib.sh
vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config

# Runs ferd with the config /tmp/ferd.toml edited by the sed script $1;
# expects exit status 5 within 120 s (the models load before the outputs
# open: seconds under emulation) and an error that holds every one of the
# remaining arguments.
expect_refusal() {
  sed "$1" /tmp/ferd.toml >/tmp/ferd-bad.toml
  shift
  t=$(date +%s)
  RUST_LOG=info timeout 120 "$FERD" run --config /tmp/ferd-bad.toml >/tmp/ferd.out 2>/tmp/ferd.err
  status=$?
  took=$(($(date +%s) - t))
  [ "$status" = 124 ] && { tail -n 20 /tmp/ferd.err; fail "ferd still running 120 s after start"; }
  err=$(grep '^error:' /tmp/ferd.err)
  [ "$status" = 5 ] || { tail -n 20 /tmp/ferd.err; fail "exit status $status, expected 5 (an output cannot be opened)"; }
  [ -n "$err" ] || { tail -n 20 /tmp/ferd.err; fail "no error line"; }
  for want in "$@"; do
    case "$err" in
      *"$want"*) ;;
      *) fail "the error does not say '$want': $err" ;;
    esac
  done
  [ -e "$EVENTS" ] && grep -q '"type":"started"' "$EVENTS" && fail "a started event although an output is missing"
  for line in 3 4; do
    [ "$(gpio_value $line)" = 0 ] || fail "line $line reads $(gpio_value $line) after ferd exited"
  done
  ok "exit status 5 after ${took}s, lines 3 and 4 read 0: $err"
}

rm -f "$EVENTS"
expect_refusal '/name = "buzzer"/,/^line/ s|^chip = .*|chip = "/dev/gpiochip9"|' \
  "buzzer" "/dev/gpiochip9" "cannot open chip"
rm -f "$EVENTS"
expect_refusal '/name = "unavailable"/,/^line/ s|^line = .*|line = 8|' \
  "unavailable" "$GPIO_CHIP line 8" "no such line (chip has 8)"
