// deepid2::Pipeline: from a photograph's pixels to features and a verdict,
// with no Python and nothing beyond C++17 and OpenMP.
//
//   auto p = deepid2::Pipeline::load();   // the models CMake installed (share/deepid2)
//   deepid2::ImageView a{pixels_a, width_a, height_a, 3 * width_a, 3, deepid2::PixelOrder::RGB};
//   deepid2::Verdict v = p.verify(a, b);  // the largest face of each
//
// The stages are those of `deepid2 verify`: YuNet finds the faces (its box
// mapped onto the box the landmark nets were trained on), the landmark
// ConvNet and its cascade give 5 points, a similarity puts the eyes and the
// mouth centre on canonical positions (250 x 250, bilinear, border
// replicated), the model's patches are cut and each runs through its
// network; PCA and the Joint Bayesian score give the verdict. Python's
// deepid2_core calls this same code.
//
// Errors: BadImage (the view is not an image this library takes), NoFace
// (verify on an image with none), ModelIOError / ModelFormatError (model
// files), std::invalid_argument (other arguments). A loaded Pipeline is
// immutable: its const methods may run concurrently from several threads.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "deepid2/model.h"

namespace deepid2 {

// Larger sides are refused (BadImage): keeps every size product in range.
constexpr int kMaxImageSide = 1 << 15;

enum class PixelOrder { RGB, BGR };  // 3-channel byte order (OpenCV's cv::Mat is BGR)

// 8-bit pixels the caller owns: row y starts at pixels + y * stride.
struct ImageView {
    const uint8_t* pixels = nullptr;
    int width = 0, height = 0;
    size_t stride = 0;   // bytes from a row to the next, >= width * channels
    int channels = 3;    // 1 (grey) or 3
    PixelOrder order = PixelOrder::RGB;
};

struct BadImage : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
struct NoFace : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class Pick { Largest, Center };  // which face comes first: by area, or nearest the centre

struct Face {
    float box[4];        // x, y, w, h in image pixels: the box the landmark nets take
    float landmarks[10]; // x, y of the left eye, right eye, nose tip, left and right
                         // mouth corner (left/right as seen in the image), pixel centres
                         // at integer coordinates
    float score;         // YuNet's confidence, 0..1
    int turn = 0;        // quarter turns counter-clockwise (np.rot90) that made the face
                         // upright for the landmark nets: 0 as given, 1-3 sideways or
                         // upside down (box and landmarks are still in the image's pixels)
    bool turn_unsure = false;  // another orientation scored nearly as high: the roll
                               // of this face could not be told
};

// The installed models' folder. find_package(deepid2) defines it for its
// users (share/deepid2 of the install, wherever that was moved); the build
// tree's targets get the source tree's deepid2_core/models.
#ifndef DEEPID2_MODEL_DIR
#define DEEPID2_MODEL_DIR ""
#endif

// Where the three model files are; an empty path means the installed one.
struct PipelineFiles {
    std::string verifier;   // deepid2-verifier/1 or /2 (verifier.safetensors)
    std::string landmarks;  // deepid2-landmarks-model/1 (landmarks.safetensors)
    std::string detector;   // deepid2-yunet/1 (yunet.safetensors)
};

class Pipeline {
public:
    // The files named, and for those not named the installed models: the
    // folder in the environment variable DEEPID2_MODELS when it is set, else
    // `installed` (the default: where CMake installed them). ModelIOError
    // when neither is known.
    static Pipeline load(const PipelineFiles& files = {},
                         const std::string& installed = DEEPID2_MODEL_DIR);
    // Detection, landmarks and alignment only (detect, locate, align); embed,
    // verify and model() throw std::logic_error.
    static Pipeline load_detection(const std::string& landmarks, const std::string& detector);
    // The folder holding verifier.safetensors, landmarks.safetensors and yunet.safetensors.
    static Pipeline load_folder(const std::string& folder);

    // Every face, `pick` order first, with its landmarks ([] when none). A
    // photo whose best face YuNet scores low is also searched at the three
    // other quarter turns (pixels turned, no EXIF tag); a clearly better
    // turn is used, and Face::turn and Face::turn_unsure say what was found.
    std::vector<Face> detect(const ImageView& image, Pick pick = Pick::Largest) const;
    // The landmarks of the face in `box` (x, y, w, h in the landmark nets'
    // convention), for a face found by other means; score 0.
    Face locate(const ImageView& image, const float box[4]) const;
    // The face aligned as `deepid2 align` writes it: BGR, height x width x 3
    // into out (3 * width * height bytes); aligned_landmarks (10 floats, may be null).
    void align(const ImageView& image, const Face& face, int width, int height, uint8_t* out,
               float* aligned_landmarks = nullptr) const;
    // Raw features (model().feature_dim() floats) of one detected face.
    std::vector<float> embed(const ImageView& image, const Face& face) const;
    // n faces at once (faster than n calls): out receives n x feature_dim floats.
    void embed(const ImageView* images, const Face* faces, int n, float* out) const;
    // The first face of each (NoFace when one has none), embedded and scored.
    Verdict verify(const ImageView& a, const ImageView& b, Pick pick = Pick::Largest) const;

    const Model& model() const;
    static constexpr int kAlignedSide = 250;  // the aligned face the patches are cut from

    Pipeline(Pipeline&&) noexcept;
    Pipeline& operator=(Pipeline&&) noexcept;
    ~Pipeline();

    struct Impl;

private:
    explicit Pipeline(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace deepid2
