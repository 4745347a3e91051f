// Alignment (deepid2_core/face/align.py): the least-squares similarity on the
// two eyes and the mouth-corner midpoint, in align.similarity_transform's
// complex arithmetic step by step, so the matrix agrees with numpy's to the
// last bits; and the face warped with it (image.h's warp_affine).
#include <cmath>
#include <stdexcept>
#include <string>

#include "geometry.h"
#include "no_fma.h"

namespace deepid2 {
namespace face {
namespace {

// align.CANONICAL and align.MEAN_SHAPE: fractions of the face's width / height.
constexpr double kCanonical[3][2] = {{0.412, 0.45}, {0.588, 0.45}, {0.5, 0.626}};
constexpr double kMeanShape[5][2] = {
    {0.412, 0.45}, {0.588, 0.45}, {0.5, 0.55}, {0.425, 0.626}, {0.575, 0.626}};

struct Complex {
    double re, im;
};

// numpy's complex division by a real (a complex with im = 0): Smith's method
// reduces it to a product with 1 / d, not a division of each part.
Complex div_real(Complex a, double d) {
    const double scale = 1.0 / d;
    return {a.re * scale, a.im * scale};
}

Complex mul(Complex a, Complex b) { return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re}; }

Complex mean3(const Complex p[3]) {
    Complex s{0.0, 0.0};
    for (int i = 0; i < 3; ++i) s = {s.re + p[i].re, s.im + p[i].im};
    return div_real(s, 3.0);
}

void check_size(int width, int height) {
    if (width < 1 || height < 1 || width > kMaxImageSide || height > kMaxImageSide)
        throw std::invalid_argument("alignment: width and height must be 1.." +
                                    std::to_string(kMaxImageSide) + ", got " +
                                    std::to_string(width) + "x" + std::to_string(height));
}

void check_points(const double pts[10]) {
    if (!pts) throw std::invalid_argument("alignment: landmarks are null");
    for (int i = 0; i < 10; ++i)
        if (!std::isfinite(pts[i]))
            throw std::invalid_argument("alignment: landmark " + std::to_string(i / 2) +
                                        " is not finite");
}

}  // namespace

Affine alignment_matrix(const double pts[10], int width, int height) {
    check_size(width, height);
    check_points(pts);
    // align.alignment_points: left eye, right eye, mouth-corner midpoint
    const Complex src[3] = {{pts[0], pts[1]},
                            {pts[2], pts[3]},
                            {(pts[6] + pts[8]) / 2, (pts[7] + pts[9]) / 2}};
    Complex dst[3];
    for (int i = 0; i < 3; ++i)  // align.to_pixels
        dst[i] = {kCanonical[i][0] * width - 0.5, kCanonical[i][1] * height - 0.5};
    const Complex sm = mean3(src), dm = mean3(dst);
    double den = 0.0, max_abs = 0.0;
    Complex num{0.0, 0.0};
    for (int i = 0; i < 3; ++i) {
        const Complex s0{src[i].re - sm.re, src[i].im - sm.im};
        const Complex d0{dst[i].re - dm.re, dst[i].im - dm.im};
        const double r = std::hypot(s0.re, s0.im);  // np.abs
        den += r * r;
        const Complex p = mul({s0.re, -s0.im}, d0);  // conj(s0) * d0
        num = {num.re + p.re, num.im + p.im};
        max_abs = std::fmax(max_abs, std::hypot(src[i].re, src[i].im));
    }
    if (den <= 1e-12 * std::fmax(1.0, max_abs * max_abs))
        throw std::invalid_argument("alignment: the eyes and the mouth coincide: no similarity");
    const Complex z = div_real(num, den);
    const Complex zsm = mul(z, sm);
    const Complex t{dm.re - zsm.re, dm.im - zsm.im};
    return {z.re, -z.im, t.re, z.im, z.re, t.im};
}

Image align_face(const Image& bgr, const double pts[10], int width, int height,
                 double aligned_pts[10]) {
    if (bgr.empty() || (bgr.c != 1 && bgr.c != 3) || bgr.px.size() != size_t(bgr.h) * bgr.w * bgr.c)
        throw std::invalid_argument("align_face: the image must be a non-empty 1- or 3-channel image");
    const Affine m = alignment_matrix(pts, width, height);
    Image out = warp_affine(bgr, m, width, height);
    if (aligned_pts)
        for (int k = 0; k < 5; ++k) {  // align.transform_points: pts @ M[:, :2].T + M[:, 2]
            const double x = pts[2 * k], y = pts[2 * k + 1];
            aligned_pts[2 * k] = (x * m[0] + y * m[1]) + m[2];
            aligned_pts[2 * k + 1] = (x * m[3] + y * m[4]) + m[5];
        }
    return out;
}

void mean_shape(int width, int height, double pts[10]) {
    check_size(width, height);
    if (!pts) throw std::invalid_argument("mean_shape: pts is null");
    for (int k = 0; k < 5; ++k) {
        pts[2 * k] = kMeanShape[k][0] * width - 0.5;
        pts[2 * k + 1] = kMeanShape[k][1] * height - 0.5;
    }
}

}  // namespace face
}  // namespace deepid2
