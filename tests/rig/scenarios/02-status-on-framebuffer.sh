# The status screen appears on /dev/fb0 (vfb on x86_64, virtio-gpu on
# aarch64): ferd shows it on the framebuffer and as a PNG at once; /dev/fb0
# is read back while the alert banner is up and compared pixel by pixel
# with the PNG renderer's picture on the host
# (02-status-on-framebuffer.check). After SIGTERM the framebuffer is blank.
# rig-arch: x86_64 aarch64
. /rig/tests/rig/guest/lib.sh
vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
fb_setup || fail "no framebuffer"
# The console must not draw on the framebuffer we read back.
echo 0 >/sys/class/vtconsole/vtcon1/bind 2>/dev/null || true
make_config
stream_start "$DATA/distress.y4m"
ferd_start --display fb:/dev/fb0 --display png:/tmp/status.png
event_wait started 120 || { ferd_log; fail "ferd did not start within 120 s"; }
gpio_wait 3 150 1 >/dev/null || { ferd_log; fail "no alert within 150 s"; }
ok "alert raised"
# Snapshot the pair while no new frame changes the picture in between.
n=0
while :; do
  n=$((n + 1))
  [ "$n" -gt 20 ] && fail "the screen never held still for a snapshot"
  cp /tmp/status.png /tmp/a.png 2>/dev/null || { sleep 1; continue; }
  dd if=/dev/fb0 of=/tmp/fb0.raw bs=65536 2>/dev/null
  sleep 0.3
  cmp -s /tmp/status.png /tmp/a.png && break
done
cp /tmp/a.png "$OUT/02-status.png"
cp /tmp/fb0.raw "$OUT/02-fb0.raw"
f=/sys/class/graphics/fb0
echo "$(cat $f/virtual_size) $(cat $f/bits_per_pixel) $(cat $f/stride)" >"$OUT/02-fb0.geometry"
ok "snapshot taken: fb0 $(cat "$OUT/02-fb0.geometry")"
ferd_stop 30
[ "$FERD_STATUS" = 0 ] || { ferd_log; fail "ferd exited with $FERD_STATUS"; }
lit=$(dd if=/dev/fb0 bs=65536 2>/dev/null | tr -d '\000' | wc -c)
[ "$lit" = 0 ] || fail "framebuffer not blank after exit ($lit non-zero bytes)"
ok "framebuffer blank after SIGTERM"
