// YuNet (OpenCV model zoo, face_detection_yunet_2026may) on the engine's own
// CPU code, and the box rule the landmark nets were trained on
// (deepid2_core/face/box.py, "yunet").
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "image.h"

namespace deepid2 {
namespace face {

struct Detection {
    double box[4];        // x, y, w, h
    double landmarks[10]; // 5 points, x, y each (YuNet's order = the project's)
    double score;
};

class YuNet {
public:
    // A "deepid2-yunet/1" safetensors file (tools: cpp/tools/convert_yunet.py);
    // ModelIOError / ModelFormatError as Model::load.
    static YuNet load(const std::string& path);
    static YuNet load_memory(const void* bytes, size_t size);

    // cv2.FaceDetectorYN.detect on the image at its own size (input size =
    // image size), score threshold score_threshold, NMS 0.3, top 5000: YuNet's
    // own boxes, in the order FaceDetectorYN gives them.
    std::vector<Detection> detect(const Image& bgr, double score_threshold = 0.6) const;

    YuNet(YuNet&&) noexcept;
    YuNet& operator=(YuNet&&) noexcept;
    ~YuNet();
    struct Impl;

private:
    explicit YuNet(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// box.py's "yunet" rule without the Haar fallback: the image shrunk to
// max_side for detection (INTER_AREA) when larger, small images (< 400 px)
// where nothing is found retried upscaled 2x then padded by 40 px, boxes
// mapped onto the Haar convention (YUNET_TO_HAAR), in `pick` order.
// Landmarks are YuNet's, in the image's pixels. retry_small false skips the
// small-image retries (a quick look: the same result wherever it finds a face).
std::vector<Detection> find_faces(const YuNet& net, const Image& bgr, Pick pick,
                                  int max_side = 1024, bool retry_small = true);

}  // namespace face
}  // namespace deepid2
