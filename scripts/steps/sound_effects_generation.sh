#!/bin/sh
# Offline stand-in for the sound-effects API: synthesises with sox a soft
# ambient bed for the whole video (low-passed brown noise, a low drone that
# swells slowly, faded in and out) plus a gentle two-note chime at every
# scene change.
#
# Writes sfx.wav (stereo 44.1 kHz, exactly scenes * seconds_per_scene long).
# Simulated price: $0.01 per effect (the bed and each chime).
set -eu
STEP=sound_effects_generation
case $0 in */*) VG_STEPS_DIR=${0%/*} ;; *) VG_STEPS_DIR=. ;; esac
. "$VG_STEPS_DIR/_lib.sh"

vg_begin
need_tools sox soxi

rate=$VG_AUDIO_RATE
bed=.sfx.bed.wav
tmp=.sfx.tmp.wav

# Root of the drone: a few low notes, picked by the title.
case $(($(hash_of "$TITLE") % 4)) in
    0) root=110 ;;
    1) root=98 ;;
    2) root=123.47 ;;
    *) root=87.31 ;;
esac
fifth=$(calc "$root * 1.5")
fade_in=$(calc "$TOTAL < 4 ? 0.3 : 0.8")
fade_out=$(calc "$TOTAL < 4 ? 0.4 : 1.2")

run sox -n -r "$rate" -c 2 -b 16 "$bed" \
    synth "$TOTAL" brownnoise synth "$TOTAL" sine mix "$root" synth "$TOTAL" sine mix "$fifth" \
    lowpass 700 tremolo 0.2 40 gain -n -14 fade q "$fade_in" "$TOTAL" "$fade_out"

# One chime file per scene change, padded to start at the cut.
chimes=''
chime_files=''
effects=1
i=1
while [ "$i" -lt "$SCENES" ]; do
    at=$((i * SPS))
    chime=".sfx.chime_$i.wav"
    run sox -n -r "$rate" -c 2 -b 16 "$chime" \
        synth 1.5 pluck 659.25 synth 1.5 pluck mix 987.77 \
        fade q 0.005 1.5 1.2 gain -n -8 pad "$at"
    chimes="$chimes -v 1 $chime"
    chime_files="$chime_files $chime"
    effects=$((effects + 1))
    i=$((i + 1))
done

if [ -n "$chimes" ]; then
    # -m sums the inputs; trim to the video length (a chime at the last cut
    # may run past the end).
    set -f
    # shellcheck disable=SC2086 # word splitting of the file list is intended
    run sox -m -v 1 "$bed" $chimes "$tmp" trim 0 "$TOTAL"
    set +f
    # shellcheck disable=SC2086
    rm -f $chime_files
else
    run sox "$bed" "$tmp" trim 0 "$TOTAL"
fi
rm -f "$bed"
mv -f "$tmp" sfx.wav
duration=$(soxi -D sfx.wav) || die_temp "cannot read sfx.wav"
log "sfx ${duration}s: ambient bed (root ${root} Hz) + $((effects - 1)) chime(s)"

outputs=$(jq -cn --argjson duration "$duration" --argjson effects "$effects" \
    '{path: "sfx.wav", duration_seconds: (($duration * 1000 | round) / 1000),
      effects: $effects}')
emit_result "$outputs" "[$(cost_item sound_effects "$effects" 0.01)]"
