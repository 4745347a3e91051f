// Reads a JPEG or PNG file into 8-bit RGB pixels, for the examples and the
// benchmark only: the library itself decodes no files (it takes an ImageView).
//
//   ImageFile img = read_image_file("face.jpg");        // throws ImageFileError
//   deepid2::ImageView view = img.view();
//
// The format is told by the file's first bytes, not its name. Grey, palette,
// alpha and 16-bit PNGs and grey or CMYK JPEGs come out as RGB (alpha is
// dropped). EXIF orientation is not applied: a photo a camera stored sideways
// stays sideways. Images over kMaxImagePixels are refused from the header,
// before any pixel is decoded; a truncated or corrupt file is refused with a
// one-line message, never half-decoded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "deepid2/pipeline.h"

namespace deepid2_examples {

constexpr long long kMaxImagePixels = 50'000'000;   // 50 megapixels (150 MB of RGB)
constexpr long long kMaxImageFileBytes = 1LL << 29; // 512 MiB

// What went wrong, in one line that names the file.
struct ImageFileError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ImageFile {
    std::vector<uint8_t> rgb;  // height rows of width * 3 bytes, R G B
    int width = 0, height = 0;

    deepid2::ImageView view() const {
        return deepid2::ImageView{rgb.data(), width, height, size_t(width) * 3, 3,
                                  deepid2::PixelOrder::RGB};
    }
};

ImageFile read_image_file(const std::string& path);
// The same on bytes in memory; `name` is what messages call them.
ImageFile decode_image(const uint8_t* data, size_t size, const std::string& name);

}  // namespace deepid2_examples
