// JPEG (libjpeg-turbo) and PNG (libpng) decoding for the examples.
//
// Both libraries report errors by calling a handler that must not return:
// libjpeg's default one calls exit(), libpng's prints and longjmps. Ours copy
// the message and longjmp back to the decoding function, which returns false.
// Every object the decoders touch lives in the caller's frame (JpegDecoder,
// PngDecoder, the ImageFile), never in the frame that called setjmp, so no
// local's value is left indeterminate by the longjmp; the holders' destructors
// free the libraries' state on every path. No C++ exception crosses the C code.
#include "image_file.h"

#include <csetjmp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include <jpeglib.h>  // after <cstdio>: it uses FILE and size_t
#include <jerror.h>   // the message codes (JWRN_...)
#include <png.h>

namespace deepid2_examples {
namespace {

// A progressive JPEG of many tiny scans costs a full pass each: a few KB of
// input could keep the decoder busy for minutes. Real photos have about 10.
constexpr int kMaxJpegScans = 500;

// Whether width x height is an image we decode; if not, why not into `why`.
// (No std::string: the decoders call this between setjmp and a possible
// longjmp, which would skip its destructor.)
bool size_ok(long long width, long long height, char* why, size_t why_size) {
    if (width <= 0 || height <= 0) {
        std::snprintf(why, why_size, "the image has no pixels");
        return false;
    }
    if (width * height > kMaxImagePixels) {
        std::snprintf(why, why_size, "%lld x %lld pixels is more than the %lld-megapixel limit",
                      width, height, kMaxImagePixels / 1'000'000);
        return false;
    }
    return true;
}

// ---------------------------------------------------------------- JPEG
struct JpegDecoder {
    jpeg_decompress_struct cinfo{};
    jpeg_error_mgr errors{};
    jpeg_progress_mgr progress{};
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX + 64] = "";
    bool created = false;
    std::vector<uint8_t> cmyk_row;

    ~JpegDecoder() {
        if (created) jpeg_destroy_decompress(&cinfo);
    }
};

JpegDecoder& decoder_of(j_common_ptr cinfo) { return *static_cast<JpegDecoder*>(cinfo->client_data); }

[[noreturn]] void jpeg_fail(j_common_ptr cinfo) {
    JpegDecoder& d = decoder_of(cinfo);
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    std::snprintf(d.message, sizeof d.message, "corrupt JPEG (%s)", text);
    std::longjmp(d.jump, 1);
}

// libjpeg only warns where data is missing and fills the rest of the image
// with grey; a photo with a grey band is no input for face verification, so
// those two warnings are errors here. Other warnings (stray bytes between
// markers and the like) leave the image whole and are let through.
void jpeg_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;  // trace output
    const int code = cinfo->err->msg_code;
    if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER) {
        JpegDecoder& d = decoder_of(cinfo);
        std::snprintf(d.message, sizeof d.message, "truncated JPEG: the image data ends early");
        std::longjmp(d.jump, 1);
    }
    cinfo->err->num_warnings++;
}

void jpeg_progress(j_common_ptr cinfo) {
    auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
    if (dinfo->input_scan_number > kMaxJpegScans) {
        JpegDecoder& d = decoder_of(cinfo);
        std::snprintf(d.message, sizeof d.message, "corrupt JPEG (more than %d scans)", kMaxJpegScans);
        std::longjmp(d.jump, 1);
    }
}

bool decode_jpeg_into(JpegDecoder& d, const uint8_t* data, size_t size, ImageFile& out) {
    if (setjmp(d.jump)) return false;
    d.cinfo.err = jpeg_std_error(&d.errors);
    d.errors.error_exit = jpeg_fail;
    d.errors.emit_message = jpeg_message;
    d.cinfo.client_data = &d;
    jpeg_create_decompress(&d.cinfo);
    d.created = true;
    d.progress.progress_monitor = jpeg_progress;
    d.cinfo.progress = &d.progress;
    jpeg_mem_src(&d.cinfo, data, static_cast<unsigned long>(size));
    jpeg_read_header(&d.cinfo, TRUE);
    if (!size_ok(d.cinfo.image_width, d.cinfo.image_height, d.message, sizeof d.message))
        return false;
    // libjpeg-turbo turns grey and YCbCr into RGB itself, but not CMYK.
    const bool cmyk = d.cinfo.jpeg_color_space == JCS_CMYK || d.cinfo.jpeg_color_space == JCS_YCCK;
    d.cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&d.cinfo);
    const size_t w = d.cinfo.output_width, h = d.cinfo.output_height;
    if (d.cinfo.output_components != (cmyk ? 4 : 3)) {
        std::snprintf(d.message, sizeof d.message, "unsupported JPEG colour format");
        return false;
    }
    out.width = int(w);
    out.height = int(h);
    out.rgb.resize(w * h * 3);
    d.cmyk_row.resize(cmyk ? w * 4 : 0);
    while (d.cinfo.output_scanline < h) {
        uint8_t* rgb_row = &out.rgb[size_t(d.cinfo.output_scanline) * w * 3];
        JSAMPROW row = cmyk ? d.cmyk_row.data() : rgb_row;
        if (jpeg_read_scanlines(&d.cinfo, &row, 1) != 1) {
            std::snprintf(d.message, sizeof d.message, "truncated JPEG: the image data ends early");
            return false;
        }
        if (cmyk) {
            // Adobe's CMYK JPEGs (nearly all of them) store the inks inverted.
            const bool inverted = d.cinfo.saw_Adobe_marker;
            for (size_t x = 0; x < w; ++x) {
                const uint8_t* p = &d.cmyk_row[4 * x];
                const int k = inverted ? p[3] : 255 - p[3];
                for (int c = 0; c < 3; ++c)
                    rgb_row[3 * x + c] = uint8_t(((inverted ? p[c] : 255 - p[c]) * k + 127) / 255);
            }
        }
    }
    // No jpeg_finish_decompress: every pixel is in, and what follows the
    // image data (a missing end marker, say) does not matter.
    return true;
}

// ---------------------------------------------------------------- PNG
struct PngDecoder {
    png_structp png = nullptr;
    png_infop info = nullptr;
    const uint8_t* data = nullptr;
    size_t size = 0, pos = 0;
    char message[256] = "";
    std::vector<png_bytep> rows;

    ~PngDecoder() {
        if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    }
};

[[noreturn]] void png_fail(png_structp png, png_const_charp text) {
    auto* d = static_cast<PngDecoder*>(png_get_error_ptr(png));
    if (!d->message[0]) std::snprintf(d->message, sizeof d->message, "corrupt PNG (%s)", text);
    png_longjmp(png, 1);
}

// libpng warns about damaged ancillary chunks (colour profiles, text) and
// skips them; the pixels are still right.
void png_warn(png_structp, png_const_charp) {}

void png_read_memory(png_structp png, png_bytep to, size_t n) {
    auto* d = static_cast<PngDecoder*>(png_get_io_ptr(png));
    if (n > d->size - d->pos) {
        std::snprintf(d->message, sizeof d->message, "truncated PNG: the data ends early");
        png_error(png, "truncated");
    }
    std::memcpy(to, d->data + d->pos, n);
    d->pos += n;
}

bool decode_png_into(PngDecoder& d, ImageFile& out) {
    if (setjmp(png_jmpbuf(d.png))) return false;
    png_set_read_fn(d.png, &d, png_read_memory);
    png_read_info(d.png, d.info);
    if (!size_ok(png_get_image_width(d.png, d.info), png_get_image_height(d.png, d.info),
                 d.message, sizeof d.message))
        return false;
    png_set_expand(d.png);         // palette -> RGB, grey of 1-4 bits -> 8, tRNS -> alpha
    png_set_scale_16(d.png);       // 16 bits -> 8
    png_set_strip_alpha(d.png);    // the colours under the alpha, as OpenCV reads them
    png_set_gray_to_rgb(d.png);
    png_set_interlace_handling(d.png);
    png_read_update_info(d.png, d.info);
    const size_t w = png_get_image_width(d.png, d.info), h = png_get_image_height(d.png, d.info);
    if (png_get_rowbytes(d.png, d.info) != w * 3) {
        std::snprintf(d.message, sizeof d.message, "unsupported PNG pixel format");
        return false;
    }
    out.width = int(w);
    out.height = int(h);
    out.rgb.resize(w * h * 3);
    d.rows.resize(h);
    for (size_t y = 0; y < h; ++y) d.rows[y] = &out.rgb[y * w * 3];
    png_read_image(d.png, d.rows.data());
    // No png_read_end: the chunks after the image data carry no pixels.
    return true;
}

bool starts_with(const uint8_t* data, size_t size, const char* magic, size_t n) {
    return size >= n && std::memcmp(data, magic, n) == 0;
}

}  // namespace

ImageFile decode_image(const uint8_t* data, size_t size, const std::string& name) {
    ImageFile out;
    if (starts_with(data, size, "\xFF\xD8\xFF", 3)) {
        JpegDecoder d;
        if (!decode_jpeg_into(d, data, size, out)) throw ImageFileError(name + ": " + d.message);
    } else if (starts_with(data, size, "\x89PNG\r\n\x1A\n", 8)) {
        PngDecoder d;
        d.data = data;
        d.size = size;
        d.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &d, png_fail, png_warn);
        if (d.png) d.info = png_create_info_struct(d.png);
        if (!d.png || !d.info) throw ImageFileError(name + ": out of memory for the PNG decoder");
        if (!decode_png_into(d, out)) throw ImageFileError(name + ": " + d.message);
    } else {
        throw ImageFileError(name + (size == 0 ? ": empty file" : ": not a JPEG or PNG file"));
    }
    return out;
}

ImageFile read_image_file(const std::string& path) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!f) throw ImageFileError("cannot read " + path + ": " + std::strerror(errno));
    std::vector<uint8_t> bytes;
    uint8_t chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, f.get())) > 0) {
        if (bytes.size() + n > size_t(kMaxImageFileBytes))
            throw ImageFileError(path + ": larger than " +
                                 std::to_string(kMaxImageFileBytes >> 20) + " MiB");
        bytes.insert(bytes.end(), chunk, chunk + n);
    }
    if (std::ferror(f.get())) throw ImageFileError("cannot read " + path + ": " + std::strerror(errno));
    return decode_image(bytes.data(), bytes.size(), path);
}

}  // namespace deepid2_examples
