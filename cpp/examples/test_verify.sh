#!/bin/sh
# ctest's checks of deepid2_verify (the photo example).
#   test_verify.sh VERIFY errors IMAGES_DIR   bad input: exit status 2, one line on stderr
#   test_verify.sh VERIFY photos DATA_DIR     LFW photos: the right verdicts
# The photos are the shared LFW copy's ($DEEPID2_DATA, else DATA_DIR), not the
# repository's: exit 77 (ctest: skipped) where they are absent.
set -u
verify=$1 mode=$2 dir=$3
fail() { echo "FAIL: $*"; exit 1; }

# expect STATUS PATTERN ARGS...: run the example, check its status and output
expect() {
    want=$1 pattern=$2; shift 2
    out=$("$verify" "$@" 2>&1); got=$?
    echo "deepid2_verify $*  ->  [$got] $out"
    [ "$got" = "$want" ] || fail "exit status $got, expected $want"
    [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "expected one line"
    printf '%s\n' "$out" | grep -Eq "$pattern" || fail "expected /$pattern/"
}

case $mode in
errors)
    expect 2 "cannot read .*no_such_photo.jpg" "$dir/no_such_photo.jpg" "$dir/rgb.jpg"
    expect 2 "huge.png: 8000 x 8000 pixels is more than" "$dir/rgb.jpg" "$dir/huge.png"
    expect 2 "not a JPEG or PNG file" "$0" "$dir/rgb.jpg"
    expect 2 "no face found in .*rgb8.png" "$dir/rgb8.png" "$dir/rgb.jpg"
    expect 2 "usage" "$dir/rgb.jpg"
    ;;
photos)
    lfw=${DEEPID2_DATA:-$dir}/lfw
    a1=$lfw/Aaron_Peirsol/Aaron_Peirsol_0001.jpg a2=$lfw/Aaron_Peirsol/Aaron_Peirsol_0002.jpg
    other=$lfw/Abdullah_Gul/Abdullah_Gul_0001.jpg
    for f in "$a1" "$a2" "$other"; do
        [ -f "$f" ] || { echo "skipped: $f is absent (set DEEPID2_DATA to the folder holding lfw/)"; exit 77; }
    done
    score='score -?[0-9]+\.[0-9]+ \(threshold -?[0-9]+\.[0-9]+\)$'
    expect 0 "^same person: $score" "$a1" "$a2"
    expect 0 "^different people: $score" "$a1" "$other"
    ;;
*) fail "unknown mode $mode" ;;
esac
echo "passed"
