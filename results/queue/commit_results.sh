#!/usr/bin/env bash
# This machine's layout: main checkout /work/main, background clone /work/runs (worker.sh runs there).
# Copy the finished runs' results JSON from the background clone into main and commit them alone.
cd /work/main
added=()
while read -r ts what rc path; do
  [ "$what" = "end" ] && [ "$rc" = "rc=0" ] || continue
  src=/work/runs/$path
  [ -f "$src" ] || continue
  if ! cmp -s "$src" "$path" 2>/dev/null; then
    mkdir -p "$(dirname "$path")"; cp "$src" "$path"; added+=("$path")
  fi
done < /work/runs/.q/events.log
[ ${#added[@]} -eq 0 ] && { echo "nothing new"; exit 0; }
git add -- "${added[@]}"
msg="Results: $(for p in "${added[@]}"; do python3 - "$p" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["settings"]; v = r.get("valid") or {}
name = sys.argv[1].split("results/runs/")[1].replace(".json", "")
ref = f", refit test R@50 {r['refit']['test']['recall@50']:.4f}" if isinstance(r.get("refit"), dict) else ""
sel = f"valid R@50 {v['recall@50']:.4f} N@50 {v['ndcg@50']:.4f}" if v else f"test R@50 {r['test']['recall@50']:.4f}"
print(f"{name} (best epoch {r['best_epoch']} of {r['epochs_run']}, {sel}{ref}, {r['minutes']:.0f} min)", end="; ")
PY
done)"
git commit -q -m "${msg%; }" -- "${added[@]}" && git log --oneline -1
