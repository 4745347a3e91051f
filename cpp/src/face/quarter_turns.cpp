#include "quarter_turns.h"

#include <algorithm>

namespace deepid2 {
namespace face {
namespace {

// A point of the w x h image turned k quarter turns counter-clockwise -> the
// same point of the image.
template <typename T>
void unturn_point(T x, T y, int k, int w, int h, T& ox, T& oy) {
    switch (k) {
        case 1: ox = T(w - 1) - y; oy = x; break;
        case 2: ox = T(w - 1) - x; oy = T(h - 1) - y; break;
        case 3: ox = y; oy = T(h - 1) - x; break;
        default: ox = x; oy = y;
    }
}

}  // namespace

Image turn_ccw(const Image& im, int k) {
    const bool swap = k % 2 == 1;
    Image out(swap ? im.w : im.h, swap ? im.h : im.w, im.c);
    for (int y = 0; y < out.h; ++y)
        for (int x = 0; x < out.w; ++x) {
            int sx, sy;
            unturn_point(x, y, k, im.w, im.h, sx, sy);
            const uint8_t* src = im.row(sy) + size_t(sx) * im.c;
            std::copy(src, src + im.c, out.row(y) + size_t(x) * im.c);
        }
    return out;
}

void unturn(Face& f, int k, int w, int h) {
    for (int p = 0; p < 5; ++p) {
        double x, y;
        unturn_point(double(f.landmarks[2 * p]), double(f.landmarks[2 * p + 1]), k, w, h, x, y);
        f.landmarks[2 * p] = float(x);
        f.landmarks[2 * p + 1] = float(y);
    }
    const double bx = f.box[0], by = f.box[1], bw = f.box[2], bh = f.box[3];
    double b[4] = {bx, by, bw, bh};
    if (k == 1) { b[0] = w - by - bh; b[1] = bx; b[2] = bh; b[3] = bw; }
    else if (k == 2) { b[0] = w - bx - bw; b[1] = h - by - bh; }
    else if (k == 3) { b[0] = by; b[1] = h - bx - bw; b[2] = bh; b[3] = bw; }
    for (int j = 0; j < 4; ++j) f.box[j] = float(b[j]);
}

}  // namespace face
}  // namespace deepid2
