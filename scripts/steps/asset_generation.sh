#!/bin/sh
# Offline stand-in for the image-generation API: one abstract background
# image per scene, drawn with FFmpeg's procedural sources (gradients,
# mandelbrot, life, cellauto) in a palette chosen from the title.
#
# Writes assets/scene_N.png (N = 1..scenes). Simulated price: $0.04 per image.
set -eu
STEP=asset_generation
case $0 in */*) VG_STEPS_DIR=${0%/*} ;; *) VG_STEPS_DIR=. ;; esac
. "$VG_STEPS_DIR/_lib.sh"

vg_begin
need_tools ffmpeg

# Palettes of four colours. A keyword in the title or topic picks one,
# otherwise a hash of the title does, so all scenes of a video match and the
# same title always looks the same.
title_hash=$(hash_of "$TITLE")
words=$(printf '%s %s' "$TITLE" "$TOPIC" | tr '[:upper:]' '[:lower:]')
case "$words" in
    *autumn* | *fall* | *harvest* | *fire*) palette_index=0 ;;
    *ocean* | *sea* | *water* | *river* | *rain* | *winter* | *snow*) palette_index=1 ;;
    *forest* | *tree* | *garden* | *spring* | *leaf* | *leaves*) palette_index=2 ;;
    *night* | *dusk* | *sunset* | *dream* | *space* | *star*) palette_index=3 ;;
    *desert* | *sand* | *summer* | *sun*) palette_index=4 ;;
    *city* | *steel* | *machine* | *robot*) palette_index=5 ;;
    *) palette_index=$((title_hash % 6)) ;;
esac
case "$palette_index" in
    0) PALETTE=autumn; C0=0x2b1a0f C1=0x8c2f0b C2=0xd9822b C3=0xf2c14e ;;
    1) PALETTE=ocean; C0=0x0b1d3a C1=0x1b4f72 C2=0x2e86ab C3=0xa7d3e8 ;;
    2) PALETTE=forest; C0=0x0f2417 C1=0x2d5a27 C2=0x6a994e C3=0xd4e09b ;;
    3) PALETTE=dusk; C0=0x1b1035 C1=0x5b2a86 C2=0xc04d7d C3=0xf7a072 ;;
    4) PALETTE=desert; C0=0x3d2c1e C1=0xa0522d C2=0xe0a458 C3=0xf6e7c1 ;;
    *) PALETTE=steel; C0=0x101820 C1=0x36454f C2=0x7b8fa1 C3=0xdfe6ed ;;
esac
log "palette $PALETTE"

W=$VG_WIDTH
H=$VG_HEIGHT
S="${W}x${H}"
mkdir -p assets || die_temp "cannot create the assets folder"

# All images come from one ffmpeg run (one filter graph with an output per
# scene): starting ffmpeg costs more than drawing a small image.
graph=''
set --
images=''
i=1
while [ "$i" -le "$SCENES" ]; do
    seed=$(($(hash_of "${VG_TASK_ID:-}:$TITLE:$i") % 100000))
    # Scenes 1, 5 (, 9) are calm gradients; in between the three other
    # styles follow in an order chosen by the title.
    slot=$(((i - 1) % 4))
    if [ "$slot" -eq 0 ]; then
        style=0
    else
        style=$(((slot - 1 + title_hash) % 3 + 1))
    fi
    case "$style" in
        0) # soft diagonal gradient with film grain and a vignette
            chain="gradients=s=$S:n=4:c0=$C0:c1=$C1:c2=$C2:c3=$C3:x0=0:y0=$H:x1=$W:y1=0:seed=$seed,format=rgb24,noise=alls=6:allf=u,vignette=PI/5[o$i]"
            ;;
        1) # a view into the Mandelbrot set, tinted with the palette
            case $((seed % 4)) in
                0) mx=-0.7436438 my=0.1318259 ms=0.005 ;;
                1) mx=-0.1011 my=0.9563 ms=0.01 ;;
                2) mx=-1.25066 my=0.02012 ms=0.002 ;;
                *) mx=-0.748 my=0.1 ms=0.02 ;;
            esac
            chain="mandelbrot=s=$S:start_x=$mx:start_y=$my:start_scale=$ms:maxiter=400:outer=normalized_iteration_count,hue=s=0,format=gbrp[a$i];\
gradients=s=$S:n=4:c0=$C3:c1=$C2:c2=$C1:c3=$C0:x0=0:y0=0:x1=$W:y1=$H,format=gbrp[b$i];\
[b$i][a$i]blend=all_mode=overlay,format=rgb24,vignette=PI/6[o$i]"
            ;;
        2) # blurred Game-of-Life cells as bokeh over a gradient
            chain="life=s=64x36:mold=20:ratio=0.15:death_color=black:life_color=white:mold_color=gray:seed=$seed,trim=start_frame=30,setpts=PTS-STARTPTS,scale=$W:$H:flags=bicubic,gblur=sigma=12,format=gbrp[a$i];\
gradients=s=$S:n=3:c0=$C0:c1=$C2:c2=$C3:x0=0:y0=0:x1=$W:y1=$H,format=gbrp[b$i];\
[b$i][a$i]blend=all_mode=screen:all_opacity=0.5,format=rgb24[o$i]"
            ;;
        *) # an elementary cellular automaton woven into a gradient
            chain="cellauto=s=$((W / 2))x$((H / 2)):rule=90:random_seed=$seed:random_fill_ratio=0.1:full=1,scale=$W:$H,gblur=sigma=2,format=gbrp[a$i];\
gradients=s=$S:n=3:c0=$C1:c1=$C3:c2=$C0:x0=$W:y0=0:x1=0:y1=$H,format=gbrp[b$i];\
[b$i][a$i]blend=all_mode=softlight,format=rgb24[o$i]"
            ;;
    esac
    graph="$graph${graph:+;}$chain"
    set -- "$@" -map "[o$i]" -frames:v 1 "assets/.scene_$i.tmp.png"
    images="$images assets/scene_$i.png"
    i=$((i + 1))
done

ff -filter_complex "$graph" "$@"

i=1
while [ "$i" -le "$SCENES" ]; do
    tmp="assets/.scene_$i.tmp.png"
    [ -s "$tmp" ] || die_temp "ffmpeg produced no image for scene $i"
    mv -f "$tmp" "assets/scene_$i.png"
    i=$((i + 1))
done

# shellcheck disable=SC2086 # word splitting of the path list is intended
outputs=$(jq -cn --arg palette "$PALETTE" --argjson scenes "$SCENES" \
    --argjson w "$W" --argjson h "$H" --argjson cred "$VG_HAS_CREDENTIALS" \
    '{images: $ARGS.positional, scenes: $scenes, width: $w, height: $h,
      palette: $palette, credentials_supplied: $cred}' \
    --args $images)
emit_result "$outputs" "[$(cost_item image_generation "$SCENES" 0.04)]"
