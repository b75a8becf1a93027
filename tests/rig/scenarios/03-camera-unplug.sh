# The camera vanishes while ferd streams from it and comes back: vivid's
# device is unbound from its driver mid-stream (what a USB unplug does: the
# nodes go away under the open file), the module is unloaded once ferd has
# let go of it, then loaded again. The event stream says camera_lost, then
# camera_restored, frames are analysed again, and the daemon is still
# running. While the camera is gone ferd is degraded: a `degraded` event
# and the tell-tale line 4 at 1, back to 0 once it recovers. (A plain
# rmmod cannot pull a device that is open: the module is in use.)
# rig-arch: x86_64 aarch64
. /rig/tests/rig/guest/lib.sh
vivid_load || fail "vivid did not load"
gpio_setup || fail "the GPIO chip did not come up"
make_config
stream_start "$DATA/neutral.y4m"
ferd_start
event_wait face_appeared 150 || { ferd_log; fail "no face seen within 150 s"; }
ok "face seen"
stream_stop
echo vivid.0 >/sys/bus/platform/drivers/vivid/unbind || fail "cannot unbind vivid.0"
[ -e /dev/video0 ] && fail "/dev/video0 still there after the unplug"
event_wait camera_lost 60 || { ferd_log; fail "no camera_lost event within 60 s"; }
ok "camera_lost after the unplug"
grep -q '"type":"degraded".*"reason":"camera_lost"' "$EVENTS" || { ferd_log; fail "no degraded (camera_lost) event"; }
gpio_wait 4 30 1 >/dev/null || { ferd_log; fail "tell-tale line 4 did not go to 1 within 30 s of the loss"; }
ok "degraded (camera_lost): tell-tale line 4 reads 1"
vivid_unload 30 || fail "vivid still in use 30 s after the unplug (ferd kept the device open)"
ok "vivid unloaded (ferd released the device)"
kill -0 "$FERD_PID" || { ferd_log; fail "ferd died after the unplug"; }
sleep 3
# ferd pauses while the camera is set up again: otherwise its reopen can
# win the race and stream before the loop's timings are set (vivid comes
# back in its default 1280×720 mode, and a streaming device refuses a new
# mode).
kill -STOP "$FERD_PID"
vivid_load || { kill -CONT "$FERD_PID"; fail "vivid did not load again"; }
kill -CONT "$FERD_PID"
stream_start "$DATA/neutral.y4m"
event_wait camera_restored 60 || { ferd_log; fail "no camera_restored event within 60 s"; }
ok "camera_restored after reload"
# Frames flow again: a face appears after the restore.
i=0
until sed -n '/"camera_restored"/,$p' "$EVENTS" | grep -q '"face_appeared"'; do
  i=$((i + 1))
  [ "$i" -gt 120 ] && { ferd_log; fail "no face after the restore within 120 s"; }
  sleep 1
done
ok "frames analysed again after the restore"
grep -q '"type":"recovered".*"reason":"camera_lost"' "$EVENTS" || { ferd_log; fail "no recovered (camera_lost) event"; }
gpio_wait 4 30 0 >/dev/null || { ferd_log; fail "tell-tale line 4 did not go back to 0 within 30 s"; }
ok "recovered: tell-tale line 4 reads 0"
kill -0 "$FERD_PID" || fail "ferd is not running"
ferd_stop 30
[ "$FERD_STATUS" = 0 ] || { ferd_log; fail "ferd exited with $FERD_STATUS"; }
ok "daemon survived and exited cleanly"
