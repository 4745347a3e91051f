// Pipeline: the stages of src/face/ in the order `deepid2 verify` runs them.
#include "deepid2/pipeline.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <stdexcept>

#include "../infer/json.h"
#include "geometry.h"
#include "image.h"
#include "landmarks.h"
#include "quarter_turns.h"
#include "yunet.h"


namespace deepid2 {

namespace {

// One patch network's input: patch `index` of `layout` and its flipped
// partner, cut around the mean shape (what `deepid2 verify` gives the nets).
struct PatchInput {
    std::string layout;
    int index = 0;
    face::LayoutPatchShape shape{};
};

[[noreturn]] void unsupported(const std::string& what) {
    throw ModelFormatError("verifier model: " + what + " (the C++ pipeline takes patches of a "
                           "layout, \"patch_inputs\" with lighting \"none\")");
}

// The verifier's "patch_inputs" metadata, checked against its networks.
std::vector<PatchInput> read_patch_inputs(const Model& model) {
    const std::string& text = model.metadata("patch_inputs");
    if (text.empty()) unsupported("no \"patch_inputs\" metadata");
    json::Value v;
    try {
        v = json::parse(text);
    } catch (const json::JsonError& e) {
        throw ModelFormatError(std::string("verifier model: patch_inputs is not JSON (") +
                               e.what() + ")");
    }
    const json::Value* inputs = v.find("inputs");
    if (v.type != json::Value::Type::Object || !inputs ||
        inputs->type != json::Value::Type::Array)
        throw ModelFormatError("verifier model: patch_inputs has no \"inputs\" list");
    if (int(inputs->array.size()) != model.patches())
        throw ModelFormatError("verifier model: patch_inputs lists " +
                               std::to_string(inputs->array.size()) + " patches for " +
                               std::to_string(model.patches()) + " networks");
    std::vector<PatchInput> out;
    for (size_t i = 0; i < inputs->array.size(); ++i) {
        const json::Value& d = inputs->array[i];
        const std::string where = "patch_inputs[" + std::to_string(i) + "]";
        auto str = [&](const char* key) -> std::string {
            const json::Value* f = d.find(key);
            return f && f->type == json::Value::Type::String ? f->string : std::string();
        };
        if (d.type != json::Value::Type::Object) unsupported(where + " is not an object");
        if (str("kind") != "layout") unsupported(where + " is a whole-face patch");
        const std::string lighting = str("lighting");
        if (!lighting.empty() && lighting != "none")
            unsupported(where + " has lighting \"" + lighting + "\"");
        const json::Value* idx = d.find("index");
        if (!idx || !idx->is_integer) unsupported(where + " has no integer index");
        PatchInput p;
        p.layout = str("layout");
        try {
            if (idx->integer < 0 || idx->integer >= face::layout_size(p.layout))
                throw std::invalid_argument("index " + std::to_string(idx->integer) +
                                            " out of range");
            p.index = int(idx->integer);
            p.shape = face::layout_patch_shape(p.layout, p.index);
        } catch (const std::invalid_argument& e) {
            throw ModelFormatError("verifier model: " + where + ": " + e.what());
        }
        if (p.shape.channels != model.patch_channels(int(i)) ||
            p.shape.height != model.patch_height(int(i)) ||
            p.shape.width != model.patch_width(int(i)))
            throw ModelFormatError("verifier model: " + where + " does not fit network " +
                                   std::to_string(i) + "'s input");
        out.push_back(p);
    }
    return out;
}

// uint8 h x w x C (RGB or grey) -> C x h x w floats (u - 127.5) / 128, the
// networks' input (the backends' assemble_batch).
void to_planar(const std::vector<uint8_t>& patch, const face::LayoutPatchShape& s, float* out) {
    const int hw = s.height * s.width;
    for (int p = 0; p < hw; ++p)
        for (int c = 0; c < s.channels; ++c)
            out[size_t(c) * hw + p] = (float(patch[size_t(p) * s.channels + c]) - 127.5f) / 128.0f;
}

std::string join(const std::string& folder, const char* name) {
    return folder.empty() || folder.back() == '/' ? folder + name : folder + "/" + name;
}

}  // namespace

struct Pipeline::Impl {
    std::unique_ptr<Model> verifier;  // null: loaded for detection and alignment only
    face::YuNet detector;
    face::LandmarkModel landmarks;
    std::vector<PatchInput> inputs;

    const Model& model() const {
        if (!verifier)
            throw std::logic_error("this pipeline was loaded without a verifier (detection and "
                                   "alignment only): it cannot embed or verify");
        return *verifier;
    }

    Face locate(const face::Image& gray, const double box[4], double score) const {
        double pts[10];
        landmarks.predict(gray, box, pts);
        Face f{};
        for (int k = 0; k < 4; ++k) f.box[k] = float(box[k]);
        for (int k = 0; k < 10; ++k) f.landmarks[k] = float(pts[k]);
        f.score = float(score);
        return f;
    }

    // Faces lying sideways or upside down. YuNet's five points do not show
    // the roll (on a turned LFW photo it misses the face or returns points
    // of an upright face), but its score does. Measured on 1,500 LFW photos
    // (docs/results.md, "Turned photographs"): upright faces score 0.886 at
    // least, turned ones 0.905 at most as given. So a photo whose best face
    // scores below kUprightScore (2.3% of upright LFW photos) is also
    // searched at the other three quarter turns, and a turn is taken when
    // it beats the photo as given by kTurnMargin (upright LFW photos can
    // score a hair higher upside down: 1 in 1000 did, by 0.002) and itself
    // scores kTurnedScore (on AFLW's test photos, in the wild, a half turn of
    // a hard upright face can win by more: the 5 of 9 turns read wrongly there
    // scored 0.76-0.85, the 4 read rightly 0.87-0.93). A photo with no face as
    // given takes the best turn with one. Where the
    // two best orientations are within the margin, the face says so
    // (turn_unsure). Box rule and landmark nets run on the turned image
    // (they see an upright face); box and points come back in the photo's pixels.
    static constexpr double kUprightScore = 0.905;
    static constexpr double kTurnMargin = 0.02;
    static constexpr double kTurnedScore = 0.85;

    static double top_score(const std::vector<face::Detection>& d) {
        double s = -1;  // no face
        for (const face::Detection& x : d) s = std::max(s, x.score);
        return s;
    }

    std::vector<Face> detect(const face::Image& bgr, Pick pick) const {
        std::vector<face::Detection> found = face::find_faces(detector, bgr, pick);
        const double given = top_score(found);
        int turn = 0;
        bool unsure = false;
        face::Image turned;
        if (given < kUprightScore) {
            double scores[4] = {given, -1, -1, -1};
            std::vector<face::Detection> at[4];
            face::Image images[4];
            for (int k = 1; k < 4; ++k) {
                images[k] = face::turn_ccw(bgr, k);
                // without the small-image retries: they only run where nothing is
                // found, and a turn worth taking finds its face at once
                at[k] = face::find_faces(detector, images[k], pick, 1024, false);
                scores[k] = top_score(at[k]);
            }
            int best = 1;
            for (int k = 2; k < 4; ++k)
                if (scores[k] > scores[best]) best = k;
            if (scores[best] > given + kTurnMargin && (scores[best] >= kTurnedScore || given < 0)) {
                turn = best;
                found = std::move(at[best]);
                turned = std::move(images[best]);
            }
            double runner_up = -1;  // the best score of the orientations not taken
            for (int k = 0; k < 4; ++k)
                if (k != turn) runner_up = std::max(runner_up, scores[k]);
            unsure = runner_up >= 0 && runner_up > scores[turn] - kTurnMargin;
        }
        const face::Image gray = face::to_gray(turn ? turned : bgr);
        std::vector<Face> out;
        for (const face::Detection& d : found) {
            Face f = locate(gray, d.box, d.score);
            if (turn) face::unturn(f, turn, bgr.w, bgr.h);
            f.turn = turn;
            f.turn_unsure = unsure;
            out.push_back(f);
        }
        return out;
    }

    // n faces' features: n x feature_dim floats into out.
    void embed(const face::Image* const* images, const Face* faces, int n, float* out) const {
        const Model& m = model();
        std::vector<float> patches(size_t(n) * m.input_size());
        for (int i = 0; i < n; ++i) cut(*images[i], faces[i], patches.data() + size_t(i) * m.input_size());
        if (n > 0) m.features(patches.data(), n, out);
    }

    // One face's 2P patches, as Model::features takes them.
    void cut(const face::Image& bgr, const Face& f, float* out) const {
        double pts[10], mean[10];
        for (int k = 0; k < 10; ++k) {
            pts[k] = f.landmarks[k];
            if (!std::isfinite(pts[k])) throw std::invalid_argument("face landmarks must be finite");
        }
        const face::Image aligned = face::align_face(bgr, pts, kAlignedSide, kAlignedSide, nullptr);
        face::mean_shape(kAlignedSide, kAlignedSide, mean);
        for (const PatchInput& p : inputs) {
            const size_t n = size_t(p.shape.channels) * p.shape.height * p.shape.width;
            for (int flipped = 0; flipped < 2; ++flipped) {
                to_planar(face::cut_layout_patch(aligned, mean, p.layout, p.index, flipped != 0),
                          p.shape, out);
                out += n;
            }
        }
    }
};

Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;
Pipeline::~Pipeline() = default;

// DEEPID2_MODELS, else the folder the caller was built to know.
static std::string installed_folder(const std::string& installed) {
    const char* env = std::getenv("DEEPID2_MODELS");
    if (env && *env) return env;
    if (!installed.empty()) return installed;
    throw ModelIOError("no model folder is known (a library used without find_package or "
                       "cmake --install): set DEEPID2_MODELS or name the model files");
}

Pipeline Pipeline::load_folder(const std::string& folder) {
    return load({join(folder, "verifier.safetensors"), join(folder, "landmarks.safetensors"),
                 join(folder, "yunet.safetensors")});
}

Pipeline Pipeline::load(const PipelineFiles& given, const std::string& installed) {
    PipelineFiles f = given;
    if (f.verifier.empty() || f.landmarks.empty() || f.detector.empty()) {
        const std::string dir = installed_folder(installed);
        if (f.verifier.empty()) f.verifier = join(dir, "verifier.safetensors");
        if (f.landmarks.empty()) f.landmarks = join(dir, "landmarks.safetensors");
        if (f.detector.empty()) f.detector = join(dir, "yunet.safetensors");
    }
    auto impl = std::unique_ptr<Impl>(new Impl{std::make_unique<Model>(Model::load(f.verifier)),
                                               face::YuNet::load(f.detector),
                                               face::LandmarkModel::load(f.landmarks), {}});
    impl->inputs = read_patch_inputs(*impl->verifier);
    return Pipeline(std::move(impl));
}

Pipeline Pipeline::load_detection(const std::string& landmarks, const std::string& detector) {
    return Pipeline(std::unique_ptr<Impl>(new Impl{nullptr, face::YuNet::load(detector),
                                                   face::LandmarkModel::load(landmarks), {}}));
}

const Model& Pipeline::model() const { return impl_->model(); }

std::vector<Face> Pipeline::detect(const ImageView& image, Pick pick) const {
    return impl_->detect(face::to_bgr(image), pick);
}

Face Pipeline::locate(const ImageView& image, const float box[4]) const {
    if (!box) throw std::invalid_argument("locate: box is null");
    const face::Image bgr = face::to_bgr(image);
    double b[4];
    for (int k = 0; k < 4; ++k) b[k] = box[k];
    if (!(std::isfinite(b[0]) && std::isfinite(b[1]) && b[2] > 0 && b[3] > 0 &&
          std::isfinite(b[2]) && std::isfinite(b[3])))
        throw std::invalid_argument("locate: box must be finite with a positive width and height");
    if (b[0] >= bgr.w || b[1] >= bgr.h || b[0] + b[2] <= 0 || b[1] + b[3] <= 0)
        throw std::invalid_argument("locate: the box lies outside the image");
    return impl_->locate(face::to_gray(bgr), b, 0.0);
}

void Pipeline::align(const ImageView& image, const Face& f, int width, int height, uint8_t* out,
                     float* aligned_landmarks) const {
    if (!out) throw std::invalid_argument("align: out is null");
    if (width < 8 || height < 8 || width > 4096 || height > 4096)
        throw std::invalid_argument("align: width and height must be 8..4096, got " +
                                    std::to_string(width) + "x" + std::to_string(height));
    double pts[10], aligned_pts[10];
    for (int k = 0; k < 10; ++k) {
        pts[k] = f.landmarks[k];
        if (!std::isfinite(pts[k])) throw std::invalid_argument("align: landmarks must be finite");
    }
    const face::Image a = face::align_face(face::to_bgr(image), pts, width, height, aligned_pts);
    std::copy(a.px.begin(), a.px.end(), out);
    if (aligned_landmarks)
        for (int k = 0; k < 10; ++k) aligned_landmarks[k] = float(aligned_pts[k]);
}

void Pipeline::embed(const ImageView* images, const Face* faces, int n, float* out) const {
    if (n < 0 || (n > 0 && (!images || !faces || !out)))
        throw std::invalid_argument("embed: null images, faces or out, or n < 0");
    std::vector<face::Image> bgr;
    std::vector<const face::Image*> ptrs;
    for (int i = 0; i < n; ++i) bgr.push_back(face::to_bgr(images[i]));
    for (const face::Image& im : bgr) ptrs.push_back(&im);
    impl_->embed(ptrs.data(), faces, n, out);
}

std::vector<float> Pipeline::embed(const ImageView& image, const Face& f) const {
    std::vector<float> out(size_t(impl_->model().feature_dim()));
    embed(&image, &f, 1, out.data());
    return out;
}

Verdict Pipeline::verify(const ImageView& a, const ImageView& b, Pick pick) const {
    const face::Image bgr[2] = {face::to_bgr(a), face::to_bgr(b)};
    Face faces[2];
    for (int i = 0; i < 2; ++i) {
        std::vector<Face> found = impl_->detect(bgr[i], pick);
        if (found.empty()) throw NoFace(std::string("no face found in image ") + (i ? "b" : "a"));
        faces[i] = found[0];
    }
    const face::Image* ptrs[2] = {&bgr[0], &bgr[1]};
    const Model& m = impl_->model();
    std::vector<float> feats(2 * size_t(m.feature_dim()));
    impl_->embed(ptrs, faces, 2, feats.data());
    return m.verify(feats.data(), feats.data() + m.feature_dim());
}

}  // namespace deepid2
