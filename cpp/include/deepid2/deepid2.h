/* deepid2 C API: photographs to verdicts (deepid2_pipeline_*, below), and
 * the verifier alone on pre-cut patches: load a trained verifier ("deepid2-verifier/1" or "/2" file,
 * see docs/verifier_model.md), compute DeepID2 features, verify two faces.
 * Patch network i takes C_i x H_i x W_i patches; in format 1 all alike, in
 * format 2 they may differ (deepid2_model_patch_shape, deepid2_model_input_len).
 *
 * Every function returns DEEPID2_OK (0) or an error code; on error,
 * deepid2_last_error() gives a message naming the problem (per thread, valid
 * until this thread's next deepid2_* call). No C++ exception crosses this
 * API. Buffer lengths are counts of floats and are checked.
 *
 *   deepid2_model* m = NULL;
 *   if (deepid2_model_load("verifier.safetensors", &m) != DEEPID2_OK)
 *       fprintf(stderr, "%s\n", deepid2_last_error());
 *   ...
 *   deepid2_model_free(m);
 */
#ifndef DEEPID2_DEEPID2_H
#define DEEPID2_DEEPID2_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct deepid2_model deepid2_model; /* opaque */

enum deepid2_status {
    DEEPID2_OK = 0,
    DEEPID2_ERROR_ARGUMENT = 1, /* null pointer, bad count or buffer length */
    DEEPID2_ERROR_IO = 2,       /* the file cannot be opened or read */
    DEEPID2_ERROR_FORMAT = 3,   /* not a valid verifier file */
    DEEPID2_ERROR_MEMORY = 4,   /* out of memory */
    DEEPID2_ERROR_INTERNAL = 5, /* anything else (a bug: please report) */
    DEEPID2_ERROR_IMAGE = 6,    /* the image view is not an image (null, sizes, stride, channels) */
    DEEPID2_ERROR_NO_FACE = 7   /* verify: an image in which no face was found */
};

typedef struct deepid2_model_info {
    int patches;       /* P: patch networks; a face has 2P patches */
    int channels;      /* C, H, W of every patch; all three 0 where patches */
    int height;        /* differ in shape (then see deepid2_model_patch_shape */
    int width;         /* and deepid2_model_input_len) */
    int network_dim;   /* one network's output (160) */
    int feature_dim;   /* D = 2P x network_dim: floats per face from features */
    int projected_dim; /* d, after PCA */
    double threshold;  /* "same" iff score >= threshold */
} deepid2_model_info;

/* *out receives a new model (NULL on error). */
int deepid2_model_load(const char* path, deepid2_model** out);
int deepid2_model_load_memory(const void* bytes, size_t size, deepid2_model** out);
void deepid2_model_free(deepid2_model* model); /* NULL is fine */

int deepid2_model_get_info(const deepid2_model* model, deepid2_model_info* info);
/* Patch network `patch`'s input shape (0 <= patch < P); any output may be NULL. */
int deepid2_model_patch_shape(const deepid2_model* model, int patch, int* channels, int* height,
                              int* width);
/* *len: floats of one face's patches, sum over i of 2 C_i H_i W_i. */
int deepid2_model_input_len(const deepid2_model* model, size_t* len);

/* patches: n_faces faces of input_len floats each (patches_len =
 * n_faces x input_len, exactly), a face's patches in file order
 * [p0, p0 flipped, p1, p1 flipped, ...], patch i's of C_i x H_i x W_i;
 * out: n_faces x D floats (out_len of them, exactly). */
int deepid2_features(const deepid2_model* model, const float* patches, size_t patches_len,
                     int n_faces, float* out, size_t out_len);

/* Joint Bayesian score of two raw feature vectors of D floats each, and the
 * decision at the model's threshold (same: 1 or 0). score or same may be NULL. */
int deepid2_verify(const deepid2_model* model, const float* feature_a, size_t a_len,
                   const float* feature_b, size_t b_len, double* score, int* same);

/* ---- The pipeline: photographs to features and verdicts (deepid2/pipeline.h) ---- */

typedef struct deepid2_pipeline deepid2_pipeline; /* opaque */

/* 8-bit pixels the caller owns; row y at pixels + y * stride. */
typedef struct deepid2_image {
    const unsigned char* pixels;
    int width, height;
    size_t stride;   /* bytes from a row to the next, >= width * channels */
    int channels;    /* 1 (grey) or 3 */
    int bgr;         /* 3 channels: 0 = R, G, B; 1 = B, G, R (OpenCV) */
} deepid2_image;

typedef struct deepid2_face {
    float box[4];        /* x, y, w, h (the landmark nets' box), image pixels */
    float landmarks[10]; /* x, y of left eye, right eye, nose, left, right mouth corner */
    float score;         /* the detector's confidence */
    int turn;            /* quarter turns counter-clockwise that made the face upright (0-3) */
    int turn_unsure;     /* 1: another orientation scored nearly as high */
} deepid2_face;

enum deepid2_pick { DEEPID2_PICK_LARGEST = 0, DEEPID2_PICK_CENTER = 1 };

/* Any path may be NULL: the installed model (share/deepid2, or $DEEPID2_MODELS). */
int deepid2_pipeline_load(const char* verifier, const char* landmarks, const char* detector,
                          deepid2_pipeline** out);
void deepid2_pipeline_free(deepid2_pipeline* pipeline); /* NULL is fine */
/* The verifier inside (owned by the pipeline: do not free; lives as long as it). */
int deepid2_pipeline_model(const deepid2_pipeline* pipeline, const deepid2_model** model);
/* Up to max_faces faces into faces (may be NULL when max_faces is 0), pick
 * order first; *found: how many the image has (may exceed max_faces). */
int deepid2_pipeline_detect(const deepid2_pipeline* pipeline, const deepid2_image* image,
                            int pick, deepid2_face* faces, int max_faces, int* found);
/* One face's raw features: out_len must be the model's feature_dim. */
int deepid2_pipeline_embed(const deepid2_pipeline* pipeline, const deepid2_image* image,
                           const deepid2_face* face, float* out, size_t out_len);
/* The first face of each image: DEEPID2_ERROR_NO_FACE when one has none.
 * score or same may be NULL. */
int deepid2_pipeline_verify(const deepid2_pipeline* pipeline, const deepid2_image* a,
                            const deepid2_image* b, int pick, double* score, int* same);

const char* deepid2_last_error(void);     /* "" when the last call succeeded */
const char* deepid2_status_name(int status);

#ifdef __cplusplus
}
#endif

#endif /* DEEPID2_DEEPID2_H */
