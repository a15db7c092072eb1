#!/bin/sh
# Offline stand-in for the compositing service: draws the video title on a
# translucent band and a "Scene N / M" label onto each generated image.
#
# Reads assets/scene_N.png; writes composites/scene_N.png.
# Simulated price: $0.002 per composite.
set -eu
STEP=composite_creation
case $0 in */*) VG_STEPS_DIR=${0%/*} ;; *) VG_STEPS_DIR=. ;; esac
. "$VG_STEPS_DIR/_lib.sh"

vg_begin
need_tools ffmpeg

i=1
while [ "$i" -le "$SCENES" ]; do
    need_file "assets/scene_$i.png" asset_generation
    i=$((i + 1))
done

# drawtext needs a font file. fonts-dejavu-core provides these; without
# them fall back to fontconfig's default font (if ffmpeg finds one).
VG_FONT=${VG_FONT:-$VG_FONT_DIR/DejaVuSans.ttf}
VG_FONT_BOLD=${VG_FONT_BOLD:-$VG_FONT_DIR/DejaVuSans-Bold.ttf}
font_opt() {
    # The option value goes into a filter graph: refuse characters that
    # would need escaping rather than escape them.
    case "$1" in
        *[!A-Za-z0-9_./-]*) log "warning: ignoring font path with unusual characters: $1"; return 0 ;;
    esac
    if [ -r "$1" ]; then
        printf 'fontfile=%s:' "$1"
    else
        log "warning: font $1 not found (install fonts-dejavu-core); using fontconfig's default"
    fi
}
regular=$(font_opt "$VG_FONT")
bold=$(font_opt "$VG_FONT_BOLD")

mkdir -p composites || die_temp "cannot create the composites folder"
# The texts go through files (textfile=, expansion=none) so that no title
# can inject filter syntax or %{...} expansions. One ffmpeg run draws all
# scenes (one chain and one output per scene).
title_file=composites/.title.txt
printf '%s' "$TITLE_WRAPPED" >"$title_file"

graph=''
composites=''
i=1
while [ "$i" -le "$SCENES" ]; do
    label_file="composites/.label_$i.txt"
    printf 'Scene %s / %s' "$i" "$SCENES" >"$label_file"
    graph="$graph${graph:+;}[$((i - 1)):v]\
scale=$VG_WIDTH:$VG_HEIGHT,\
drawbox=x=0:y=ih*0.62:w=iw:h=ih*0.38:color=black@0.45:t=fill,\
drawtext=${bold}textfile=$title_file:expansion=none:fontsize=28:fontcolor=white:\
line_spacing=6:x=(w-text_w)/2:y=h*0.62+(h*0.38-text_h)/2:\
shadowcolor=black@0.6:shadowx=2:shadowy=2,\
drawtext=${regular}textfile=$label_file:expansion=none:fontsize=18:\
fontcolor=white@0.85:x=w-text_w-48:y=30:box=1:boxcolor=black@0.35:boxborderw=6\
[o$i]"
    composites="$composites composites/scene_$i.png"
    i=$((i + 1))
done
# ffmpeg arguments: the inputs, the graph, then one output per scene.
set --
i=1
while [ "$i" -le "$SCENES" ]; do
    set -- "$@" -i "assets/scene_$i.png"
    i=$((i + 1))
done
set -- "$@" -filter_complex "$graph"
i=1
while [ "$i" -le "$SCENES" ]; do
    set -- "$@" -map "[o$i]" -frames:v 1 "composites/.scene_$i.tmp.png"
    i=$((i + 1))
done
ff "$@"

i=1
while [ "$i" -le "$SCENES" ]; do
    tmp="composites/.scene_$i.tmp.png"
    [ -s "$tmp" ] || die_temp "ffmpeg produced no composite for scene $i"
    mv -f "$tmp" "composites/scene_$i.png"
    rm -f "composites/.label_$i.txt"
    i=$((i + 1))
done
rm -f "$title_file"

# shellcheck disable=SC2086 # word splitting of the path list is intended
outputs=$(jq -cn --arg title "$TITLE" --argjson scenes "$SCENES" \
    '{composites: $ARGS.positional, scenes: $scenes, title: $title}' \
    --args $composites)
emit_result "$outputs" "[$(cost_item compositing "$SCENES" 0.002)]"
