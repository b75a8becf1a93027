. /rig/tests/rig/guest/lib.sh
make_config
sed -i 's|^output = "/tmp/events.jsonl"|output = "-"|; s|^realtime = true|realtime = false|' /tmp/ferd.toml
sed -i '/^\[\[gpio\]\]/,$d' /tmp/ferd.toml
sed -i 's|^model = "/rig/models/retinaface-mnet025.toml"|&\ninput_size = [160, 120]|' /tmp/ferd.toml
cp /rig/data/sad.y4m /tmp/
head -c $((39 + 6 + 307200)) /tmp/sad.y4m > /tmp/one.y4m
time $FERD run --config /tmp/ferd.toml --source /tmp/one.y4m | cut -c1-100
time $FERD run --config /tmp/ferd.toml --source /tmp/sad.y4m | cut -c1-100
