// The C API over deepid2::Model: every entry point catches everything and
// turns it into a status code plus a thread-local message.
#include "deepid2/deepid2.h"

#include <cstdint>
#include <algorithm>
#include <new>
#include <type_traits>
#include <vector>
#include <string>

#include "deepid2/model.h"
#include "deepid2/pipeline.h"

struct deepid2_model {
    deepid2::Model model;
};

static_assert(std::is_standard_layout<deepid2_model>::value,
              "deepid2_pipeline_model hands out a Model as a deepid2_model");

struct deepid2_pipeline {
    deepid2::Pipeline pipeline;
};

namespace {

thread_local std::string last_error;

int fail(int status, const std::string& what) {
    try {
        last_error = what;
    } catch (...) {  // no memory even for the message
    }
    return status;
}

template <class F>
int guarded(const char* fn, F&& body) {
    last_error.clear();
    try {
        body();
        return DEEPID2_OK;
    } catch (const deepid2::BadImage& e) {
        return fail(DEEPID2_ERROR_IMAGE, std::string(fn) + ": " + e.what());
    } catch (const deepid2::NoFace& e) {
        return fail(DEEPID2_ERROR_NO_FACE, std::string(fn) + ": " + e.what());
    } catch (const std::invalid_argument& e) {
        return fail(DEEPID2_ERROR_ARGUMENT, std::string(fn) + ": " + e.what());
    } catch (const deepid2::ModelIOError& e) {
        return fail(DEEPID2_ERROR_IO, std::string(fn) + ": " + e.what());
    } catch (const deepid2::ModelFormatError& e) {
        return fail(DEEPID2_ERROR_FORMAT, std::string(fn) + ": " + e.what());
    } catch (const std::bad_alloc&) {
        return fail(DEEPID2_ERROR_MEMORY, std::string(fn) + ": out of memory");
    } catch (const std::exception& e) {
        return fail(DEEPID2_ERROR_INTERNAL, std::string(fn) + ": " + e.what());
    } catch (...) {
        return fail(DEEPID2_ERROR_INTERNAL, std::string(fn) + ": unknown error");
    }
}

void need(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

}  // namespace

extern "C" {

int deepid2_model_load(const char* path, deepid2_model** out) {
    if (out) *out = nullptr;
    return guarded("deepid2_model_load", [&] {
        need(path && out, "path or out is NULL");
        *out = new deepid2_model{deepid2::Model::load(path)};
    });
}

int deepid2_model_load_memory(const void* bytes, size_t size, deepid2_model** out) {
    if (out) *out = nullptr;
    return guarded("deepid2_model_load_memory", [&] {
        need(out && (bytes || size == 0), "bytes or out is NULL");
        *out = new deepid2_model{deepid2::Model::load_memory(bytes, size)};
    });
}

void deepid2_model_free(deepid2_model* model) { delete model; }

int deepid2_model_get_info(const deepid2_model* model, deepid2_model_info* info) {
    return guarded("deepid2_model_get_info", [&] {
        need(model && info, "model or info is NULL");
        const deepid2::Model& m = model->model;
        const bool one = m.uniform_patches();  // else 0: no single shape to give
        *info = {m.patches(), one ? m.channels() : 0, one ? m.height() : 0, one ? m.width() : 0,
                 m.network_dim(), m.feature_dim(), m.projected_dim(), m.threshold()};
    });
}

int deepid2_model_patch_shape(const deepid2_model* model, int patch, int* channels, int* height,
                              int* width) {
    return guarded("deepid2_model_patch_shape", [&] {
        need(model, "model is NULL");
        const deepid2::Model& m = model->model;
        need(patch >= 0 && patch < m.patches(), "patch is " + std::to_string(patch) +
                                                    ", expected 0.." + std::to_string(m.patches() - 1));
        if (channels) *channels = m.patch_channels(patch);
        if (height) *height = m.patch_height(patch);
        if (width) *width = m.patch_width(patch);
    });
}

int deepid2_model_input_len(const deepid2_model* model, size_t* len) {
    return guarded("deepid2_model_input_len", [&] {
        need(model && len, "model or len is NULL");
        *len = model->model.input_size();
    });
}

int deepid2_features(const deepid2_model* model, const float* patches, size_t patches_len,
                     int n_faces, float* out, size_t out_len) {
    return guarded("deepid2_features", [&] {
        need(model && patches && out, "model, patches or out is NULL");
        need(n_faces >= 1, "n_faces must be >= 1, got " + std::to_string(n_faces));
        const deepid2::Model& m = model->model;
        need(size_t(n_faces) <= SIZE_MAX / m.input_size(), "n_faces is too large");
        const size_t want_in = m.input_size() * size_t(n_faces);  // per-patch shapes summed
        const size_t want_out = size_t(m.feature_dim()) * size_t(n_faces);
        need(patches_len == want_in, "patches_len is " + std::to_string(patches_len) +
                                         ", expected " + std::to_string(want_in) + " for " +
                                         std::to_string(n_faces) + " faces of " +
                                         std::to_string(m.input_size()) + " floats");
        need(out_len == want_out, "out_len is " + std::to_string(out_len) + ", expected " +
                                      std::to_string(want_out));
        m.features(patches, n_faces, out);
    });
}

int deepid2_verify(const deepid2_model* model, const float* feature_a, size_t a_len,
                   const float* feature_b, size_t b_len, double* score, int* same) {
    return guarded("deepid2_verify", [&] {
        need(model && feature_a && feature_b, "model or a feature is NULL");
        const size_t D = size_t(model->model.feature_dim());
        need(a_len == D && b_len == D, "feature lengths are " + std::to_string(a_len) + " and " +
                                           std::to_string(b_len) + ", expected " +
                                           std::to_string(D));
        const deepid2::Verdict v = model->model.verify(feature_a, feature_b);
        if (score) *score = v.score;
        if (same) *same = v.same ? 1 : 0;
    });
}

const char* deepid2_last_error(void) { return last_error.c_str(); }

// ---- the pipeline ----

static deepid2::ImageView view_of(const deepid2_image* im, const char* name) {
    need(im != nullptr, std::string(name) + " is NULL");
    if (im->bgr != 0 && im->bgr != 1)
        throw deepid2::BadImage(std::string(name) + ": bgr must be 0 or 1, got " +
                                std::to_string(im->bgr));
    return {im->pixels, im->width, im->height, im->stride, im->channels,
            im->bgr ? deepid2::PixelOrder::BGR : deepid2::PixelOrder::RGB};
}

static deepid2::Pick pick_of(int pick) {
    need(pick == DEEPID2_PICK_LARGEST || pick == DEEPID2_PICK_CENTER,
         "pick must be DEEPID2_PICK_LARGEST or DEEPID2_PICK_CENTER, got " + std::to_string(pick));
    return pick == DEEPID2_PICK_CENTER ? deepid2::Pick::Center : deepid2::Pick::Largest;
}

static deepid2::Face face_of(const deepid2_face& f) {
    deepid2::Face out;
    std::copy(f.box, f.box + 4, out.box);
    std::copy(f.landmarks, f.landmarks + 10, out.landmarks);
    out.score = f.score;
    return out;
}

int deepid2_pipeline_load(const char* verifier, const char* landmarks, const char* detector,
                          deepid2_pipeline** out) {
    if (out) *out = nullptr;
    return guarded("deepid2_pipeline_load", [&] {
        need(out != nullptr, "out is NULL");
        deepid2::PipelineFiles files{verifier ? verifier : "", landmarks ? landmarks : "",
                                     detector ? detector : ""};
        *out = new deepid2_pipeline{deepid2::Pipeline::load(files)};
    });
}

void deepid2_pipeline_free(deepid2_pipeline* pipeline) { delete pipeline; }

int deepid2_pipeline_model(const deepid2_pipeline* pipeline, const deepid2_model** model) {
    if (model) *model = nullptr;
    return guarded("deepid2_pipeline_model", [&] {
        need(pipeline && model, "pipeline or model is NULL");
        // deepid2_model is a struct holding a Model and nothing else: the
        // pipeline's Model is handed out as one, never freed by the caller.
        *model = reinterpret_cast<const deepid2_model*>(&pipeline->pipeline.model());
    });
}

int deepid2_pipeline_detect(const deepid2_pipeline* pipeline, const deepid2_image* image,
                            int pick, deepid2_face* faces, int max_faces, int* found) {
    if (found) *found = 0;
    return guarded("deepid2_pipeline_detect", [&] {
        need(pipeline && found, "pipeline or found is NULL");
        need(max_faces >= 0 && (faces || max_faces == 0),
             "faces is NULL or max_faces is negative");
        const deepid2::ImageView v = view_of(image, "image");
        const deepid2::Pick p = pick_of(pick);
        std::vector<deepid2::Face> all = pipeline->pipeline.detect(v, p);
        for (size_t i = 0; i < all.size() && int(i) < max_faces; ++i) {
            std::copy(all[i].box, all[i].box + 4, faces[i].box);
            std::copy(all[i].landmarks, all[i].landmarks + 10, faces[i].landmarks);
            faces[i].score = all[i].score;
            faces[i].turn = all[i].turn;
            faces[i].turn_unsure = all[i].turn_unsure ? 1 : 0;
        }
        *found = int(all.size());
    });
}

int deepid2_pipeline_embed(const deepid2_pipeline* pipeline, const deepid2_image* image,
                           const deepid2_face* face, float* out, size_t out_len) {
    return guarded("deepid2_pipeline_embed", [&] {
        need(pipeline && face && out, "pipeline, face or out is NULL");
        const deepid2::Model& m = pipeline->pipeline.model();
        need(out_len == size_t(m.feature_dim()),
             "out_len is " + std::to_string(out_len) + ", the model's feature_dim is " +
                 std::to_string(m.feature_dim()));
        const deepid2::ImageView v = view_of(image, "image");
        const deepid2::Face f = face_of(*face);
        pipeline->pipeline.embed(&v, &f, 1, out);
    });
}

int deepid2_pipeline_verify(const deepid2_pipeline* pipeline, const deepid2_image* a,
                            const deepid2_image* b, int pick, double* score, int* same) {
    return guarded("deepid2_pipeline_verify", [&] {
        need(pipeline != nullptr, "pipeline is NULL");
        const deepid2::ImageView va = view_of(a, "a"), vb = view_of(b, "b");
        const deepid2::Verdict v = pipeline->pipeline.verify(va, vb, pick_of(pick));
        if (score) *score = v.score;
        if (same) *same = v.same ? 1 : 0;
    });
}

const char* deepid2_status_name(int status) {
    switch (status) {
        case DEEPID2_OK: return "ok";
        case DEEPID2_ERROR_ARGUMENT: return "bad argument";
        case DEEPID2_ERROR_IO: return "i/o error";
        case DEEPID2_ERROR_FORMAT: return "bad model file";
        case DEEPID2_ERROR_MEMORY: return "out of memory";
        case DEEPID2_ERROR_INTERNAL: return "internal error";
        case DEEPID2_ERROR_IMAGE: return "bad image";
        case DEEPID2_ERROR_NO_FACE: return "no face";
    }
    return "unknown status";
}

}  // extern "C"
