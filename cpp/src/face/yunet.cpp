// YuNet as cv2.FaceDetectorYN runs it (OpenCV modules/objdetect/src/
// face_detect.cpp): the image padded with zeros on the right and bottom to a
// multiple of 32, fed as raw BGR floats; per stride (8, 16, 32) each cell's
// score sqrt(cls * obj) (both clamped to [0, 1]), box and five points decoded
// against the cell; then NMS on the boxes truncated to integers
// (dnn::NMSBoxes). And box.py's "yunet" rule on top (find_faces).
#include "../infer/model_file.h"
#include "yunet.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <stdexcept>

#include "deepid2/model.h"
#include "resize.h"
#include "yunet_graph.h"

namespace deepid2 {
namespace face {

namespace {

constexpr const char* kFormat = "deepid2-yunet/1";
constexpr uint64_t kMaxFileBytes = 64u << 20;
constexpr int kStrides[3] = {8, 16, 32};
constexpr int kDivisor = 32;
constexpr int64_t kMaxInputPixels = int64_t(1) << 26;  // 8192 x 8192: 1 GB for the first conv alone
constexpr float kNmsThreshold = 0.3f;
constexpr int kTopK = 5000;
// cls_*, obj_*, bbox_*, kps_* per stride, and their values per cell.
const char* const kHeads[4] = {"cls", "obj", "bbox", "kps"};
constexpr int kHeadWidth[4] = {1, 1, 4, 10};

// box.py: YUNET_TO_HAAR, YUNET_RETRY_SIDE; detect.py: YuNetDetector.min_face.
constexpr double kHaarDx = -0.0019, kHaarDy = -0.0108, kHaarK = 1.0992;
constexpr int kRetrySide = 400, kRetryPad = 40, kMinFace = 10, kRetryMinSide = 4;
constexpr double kRuleScore = 0.6;

[[noreturn]] void bad(const std::string& what) { throw ModelFormatError("yunet model: " + what); }

// int(v) as x86 compiles it for OpenCV's Rect2i(int(x), ...): out-of-range
// and NaN give INT_MIN (C++ leaves them undefined).
int trunc_int(float v) {
    return v > -2147483648.f && v < 2147483648.f ? int(v) : INT_MIN;
}

struct IntRect {
    int64_t x, y, w, h;
    // in double: two INT_MIN sides (a damaged model's boxes) overflow int64
    double area() const { return double(w) * double(h); }
    bool empty() const { return w <= 0 || h <= 0; }
};

// 1 - jaccardDistance(a, b) for Rect2i, as dnn's rectOverlap computes it.
float overlap(const IntRect& a, const IntRect& b) {
    const double aa = a.area(), ab = b.area();
    if (aa + ab <= 0) return 1.f;
    double inter = 0;
    if (!a.empty() && !b.empty()) {
        const int64_t iw = std::min(a.x + a.w, b.x + b.w) - std::max(a.x, b.x);
        const int64_t ih = std::min(a.y + a.h, b.y + b.h) - std::max(a.y, b.y);
        if (iw > 0 && ih > 0) inter = double(iw) * double(ih);
    }
    const double dist = 1.0 - inter / (aa + ab - inter);
    return 1.f - float(dist);
}

// dnn::NMSBoxes(boxes, scores, threshold, nms, keep, eta = 1, top_k): scores
// strictly above the threshold, stable-sorted by score, greedy.
std::vector<int> nms_boxes(const std::vector<IntRect>& boxes, const std::vector<float>& scores,
                           float threshold) {
    std::vector<std::pair<float, int>> order;
    for (size_t i = 0; i < scores.size(); ++i)
        if (scores[i] > threshold) order.emplace_back(scores[i], int(i));
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    if (int(order.size()) > kTopK) order.resize(kTopK);
    std::vector<int> keep;
    for (const auto& o : order) {
        bool ok = true;
        for (size_t k = 0; k < keep.size() && ok; ++k)
            ok = overlap(boxes[size_t(o.second)], boxes[size_t(keep[k])]) <= kNmsThreshold;
        if (ok) keep.push_back(o.second);
    }
    return keep;
}

std::string head_name(int head, int stride) {
    return std::string(kHeads[head]) + "_" + std::to_string(stride);
}

}  // namespace

struct YuNet::Impl {
    Graph graph;
    int output_index[4][3];  // head x stride -> position in graph.run()'s outputs

    explicit Impl(Graph g) : graph(std::move(g)) {}

    // Shapes of the twelve outputs for a padded input of ph x pw.
    void check_outputs(const std::vector<std::vector<int64_t>>& shapes, int ph, int pw) const {
        for (int h = 0; h < 4; ++h)
            for (int s = 0; s < 3; ++s) {
                const int64_t cells = int64_t(ph / kStrides[s]) * (pw / kStrides[s]);
                const std::vector<int64_t> want{1, cells, kHeadWidth[h]};
                if (shapes[size_t(output_index[h][s])] != want)
                    bad("output " + head_name(h, kStrides[s]) + " has the wrong shape for a " +
                        std::to_string(pw) + "x" + std::to_string(ph) + " input");
            }
    }
};

YuNet YuNet::load_memory(const void* bytes, size_t size) {
    if (!bytes && size) throw std::invalid_argument("yunet model: bytes is null");
    const safetensors::File f = safetensors::parse(static_cast<const uint8_t*>(bytes), size);
    auto fmt = f.metadata.find("format");
    if (fmt == f.metadata.end() || fmt->second != kFormat)
        bad(std::string("metadata \"format\" must be \"") + kFormat + "\"" +
            (fmt == f.metadata.end() ? " (missing)" : ", got \"" + fmt->second.substr(0, 64) + "\""));
    auto impl = std::make_unique<Impl>(Graph::from_file(f));
    const auto& names = impl->graph.output_names();
    if (names.size() != 12) bad("the graph must have YuNet's 12 outputs, it has " + std::to_string(names.size()));
    for (int h = 0; h < 4; ++h)
        for (int s = 0; s < 3; ++s) {
            const std::string want = head_name(h, kStrides[s]);
            auto it = std::find(names.begin(), names.end(), want);
            if (it == names.end()) bad("the graph has no output \"" + want + "\"");
            impl->output_index[h][s] = int(it - names.begin());
        }
    // a probe: the graph must map a padded input onto the per-stride grids
    const int ph = 2 * kDivisor, pw = 3 * kDivisor;
    impl->check_outputs(impl->graph.output_shapes({1, 3, ph, pw}), ph, pw);
    return YuNet(std::move(impl));
}

YuNet YuNet::load(const std::string& path) {
    return load_model_file(path, kMaxFileBytes, "a YuNet model",
                           [](const uint8_t* b, size_t n) { return load_memory(b, n); });
}

std::vector<Detection> YuNet::detect(const Image& bgr, double score_threshold) const {
    if (bgr.c != 3 || bgr.h < 0 || bgr.w < 0 ||
        bgr.px.size() != size_t(bgr.h) * size_t(bgr.w) * 3)
        throw std::invalid_argument("yunet: the image must be packed BGR (h x w x 3)");
    if (!(score_threshold >= 0 && score_threshold <= 1))
        throw std::invalid_argument("yunet: score_threshold must be in [0, 1]");
    if (bgr.empty()) return {};  // FaceDetectorYN.detect: no faces
    if (bgr.w > kMaxImageSide || bgr.h > kMaxImageSide)
        throw std::invalid_argument("yunet: the image is over the " + std::to_string(kMaxImageSide) +
                                    " px side limit");
    const int ph = ((bgr.h - 1) / kDivisor + 1) * kDivisor, pw = ((bgr.w - 1) / kDivisor + 1) * kDivisor;
    if (int64_t(ph) * pw > kMaxInputPixels)
        throw std::invalid_argument("yunet: " + std::to_string(bgr.w) + "x" + std::to_string(bgr.h) +
                                    " is too large to detect on at full size (find_faces shrinks it)");
    Tensor input;
    input.shape = {1, 3, ph, pw};
    input.data.assign(size_t(3) * ph * pw, 0.f);  // zero padding right and bottom
    for (int y = 0; y < bgr.h; ++y) {
        const uint8_t* row = bgr.row(y);
        for (int ch = 0; ch < 3; ++ch) {
            float* out = input.data.data() + (size_t(ch) * ph + y) * pw;
            for (int x = 0; x < bgr.w; ++x) out[x] = float(row[3 * x + ch]);
        }
    }
    const std::vector<Tensor> outs = impl_->graph.run(std::move(input));
    std::vector<std::vector<int64_t>> shapes;
    for (const Tensor& t : outs) shapes.push_back(t.shape);
    impl_->check_outputs(shapes, ph, pw);

    const float thr = float(score_threshold);
    std::vector<std::array<float, 15>> faces;
    for (int s = 0; s < 3; ++s) {
        const int stride = kStrides[s], cols = pw / stride, rows = ph / stride;
        const float* cls = outs[size_t(impl_->output_index[0][s])].data.data();
        const float* obj = outs[size_t(impl_->output_index[1][s])].data.data();
        const float* box = outs[size_t(impl_->output_index[2][s])].data.data();
        const float* kps = outs[size_t(impl_->output_index[3][s])].data.data();
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) {
                const size_t i = size_t(r) * cols + c;
                const float cs = std::min(std::max(cls[i], 0.f), 1.f);
                const float os = std::min(std::max(obj[i], 0.f), 1.f);
                const float score = std::sqrt(cs * os);
                if (!(score >= thr)) continue;  // OpenCV: skip when score < threshold
                std::array<float, 15> f;
                const float cx = (float(c) + box[i * 4]) * float(stride);
                const float cy = (float(r) + box[i * 4 + 1]) * float(stride);
                const float w = std::exp(box[i * 4 + 2]) * float(stride);
                const float h = std::exp(box[i * 4 + 3]) * float(stride);
                f[0] = cx - w / 2.f;
                f[1] = cy - h / 2.f;
                f[2] = w;
                f[3] = h;
                for (int n = 0; n < 5; ++n) {
                    f[size_t(4 + 2 * n)] = (kps[i * 10 + 2 * n] + float(c)) * float(stride);
                    f[size_t(5 + 2 * n)] = (kps[i * 10 + 2 * n + 1] + float(r)) * float(stride);
                }
                f[14] = score;
                // a damaged model's non-finite box is no face (OpenCV would pass it on)
                bool finite = true;
                for (float v : f) finite = finite && std::isfinite(v);
                if (finite) faces.push_back(f);
            }
    }
    std::vector<int> keep;
    if (faces.size() > 1) {
        std::vector<IntRect> rects;
        std::vector<float> scores;
        for (const auto& f : faces) {
            rects.push_back({trunc_int(f[0]), trunc_int(f[1]), trunc_int(f[2]), trunc_int(f[3])});
            scores.push_back(f[14]);
        }
        keep = nms_boxes(rects, scores, thr);
    } else if (faces.size() == 1) {
        keep = {0};  // FaceDetectorYN skips NMS for a single face
    }
    std::vector<Detection> out;
    for (int k : keep) {
        const auto& f = faces[size_t(k)];
        Detection d;
        for (int j = 0; j < 4; ++j) d.box[j] = f[size_t(j)];
        for (int j = 0; j < 10; ++j) d.landmarks[j] = f[size_t(4 + j)];
        d.score = f[14];
        out.push_back(d);
    }
    return out;
}

YuNet::YuNet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
YuNet::YuNet(YuNet&&) noexcept = default;
YuNet& YuNet::operator=(YuNet&&) noexcept = default;
YuNet::~YuNet() = default;

namespace {

// detect.py detect_image(all_faces=True): the image shrunk (INTER_AREA) when
// its longer side is over max_side, boxes and points scaled back in float32,
// largest float32 area first. Empty when the image is under kMinFace.
std::vector<Detection> detect_image(const YuNet& net, const Image& img, int max_side) {
    if (std::min(img.h, img.w) < kMinFace) return {};
    double scale = 1.0;
    std::vector<Detection> dets;
    if (max_side > 0 && std::max(img.h, img.w) > max_side) {
        scale = double(max_side) / std::max(img.h, img.w);
        // Python's round(): nearest, ties to even (nearbyint's default mode)
        const int w = std::max(1, int(std::nearbyint(img.w * scale)));
        const int h = std::max(1, int(std::nearbyint(img.h * scale)));
        dets = net.detect(resize_area(img, w, h), kRuleScore);
        const float s = float(scale);
        for (Detection& d : dets) {
            for (double& v : d.box) v = double(float(v) / s);
            for (double& v : d.landmarks) v = double(float(v) / s);
        }
    } else {
        dets = net.detect(img, kRuleScore);
    }
    std::stable_sort(dets.begin(), dets.end(), [](const Detection& a, const Detection& b) {
        return float(a.box[2]) * float(a.box[3]) > float(b.box[2]) * float(b.box[3]);
    });
    return dets;
}

}  // namespace

std::vector<Detection> find_faces(const YuNet& net, const Image& bgr, Pick pick, int max_side,
                                  bool retry_small) {
    if (bgr.c != 3 || bgr.empty() || bgr.px.size() != size_t(bgr.h) * size_t(bgr.w) * 3)
        throw std::invalid_argument("find_faces: the image must be packed BGR (h x w x 3), not empty");
    if (pick != Pick::Largest && pick != Pick::Center)
        throw std::invalid_argument("find_faces: pick must be Largest or Center");
    std::vector<Detection> dets = detect_image(net, bgr, max_side);
    if (retry_small && dets.empty() && std::max(bgr.h, bgr.w) < kRetrySide &&
        std::min(bgr.h, bgr.w) >= kRetryMinSide) {
        // small faces: upscaled 2x, then also padded (faces cut by the edge)
        const Image up = resize_linear(bgr, 2 * bgr.w, 2 * bgr.h);
        for (int pad : {0, kRetryPad}) {
            dets = detect_image(net, pad ? pad_replicate(up, pad) : up, 1024);
            if (dets.empty()) continue;
            for (Detection& d : dets) {  // pixel centres at integers
                for (int j = 0; j < 12; ++j) {
                    double& v = j < 2 ? d.box[j] : d.landmarks[j - 2];
                    v = (v - pad + 0.5) / 2 - 0.5;
                }
                d.box[2] /= 2;
                d.box[3] /= 2;
            }
            break;
        }
    }
    if (pick == Pick::Largest) {
        std::stable_sort(dets.begin(), dets.end(), [](const Detection& a, const Detection& b) {
            return a.box[2] * a.box[3] > b.box[2] * b.box[3];
        });
    } else {
        const auto dist = [&](const Detection& d) {
            return std::hypot(d.box[0] + d.box[2] / 2 - bgr.w / 2.0, d.box[1] + d.box[3] / 2 - bgr.h / 2.0);
        };
        std::stable_sort(dets.begin(), dets.end(),
                         [&](const Detection& a, const Detection& b) { return dist(a) < dist(b); });
    }
    for (Detection& d : dets) {  // yunet_to_haar
        const double s = std::sqrt(d.box[2] * d.box[3]);
        const double cx = d.box[0] + d.box[2] / 2 + kHaarDx * s;
        const double cy = d.box[1] + d.box[3] / 2 + kHaarDy * s;
        const double side = kHaarK * s;
        d.box[0] = cx - side / 2;
        d.box[1] = cy - side / 2;
        d.box[2] = d.box[3] = side;
    }
    return dets;
}

}  // namespace face
}  // namespace deepid2
