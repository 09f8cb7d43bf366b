#!/usr/bin/env bash
# The claim issue's background runs: one worker trains the lines of queue.txt in order, one thread
# each; start two for two at a time. A line is "OUT ARGS...": `python cikgrec_cli.py train
# --data-dir ../shared/data --threads 1 --resume --out OUT ARGS`, so a run cut by the end of a
# session continues from its checkpoint, and a finished one is skipped (--resume on a finished run
# changes nothing; with --refit it adds only the refit). Run from the root of a separate clone of
# main, whose parent holds shared/data:  nohup results/queue/worker.sh & nohup results/queue/worker.sh &
# A worker claims a line (its out and arguments) with mkdir (.q/claims/<hash>), so two never train the same run; it logs to
# .q/events.log and stops when no line is left. After a session ended: rm -r .q/claims, start again.
cd "$(dirname "$0")/../.." || exit 1
mkdir -p .q/claims .q/done
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
while true; do
  picked=""
  while read -r out args; do
    [ -z "$out" ] && continue; case "$out" in \#*) continue;; esac
    h=$(echo "$out $args" | md5sum | cut -c1-12)
    [ -e ".q/done/$h" ] && continue
    if mkdir ".q/claims/$h" 2>/dev/null; then picked="$out"; pargs="$args"; break; fi
  done < results/queue/queue.txt
  [ -z "$picked" ] && exit 0
  mkdir -p "$(dirname "$picked")"
  echo "$(date -u +%FT%T) start $picked" >> .q/events.log
  python cikgrec_cli.py train --data-dir ../shared/data --threads 1 --resume --out "$picked" $pargs >> "${picked%.json}.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%T) end rc=$rc $picked" >> .q/events.log
  [ $rc -eq 0 ] && touch ".q/done/$h"
done
