/* The installed C API from C: load, features, verify, free; and one error. */
#include <stdio.h>
#include <stdlib.h>

#include <deepid2/deepid2.h>

int main(int argc, char** argv) {
    deepid2_model* m = NULL;
    deepid2_model_info info;
    if (argc != 2) return 2;
    if (deepid2_model_load("no/such/file", &m) != DEEPID2_ERROR_IO) return 1;
    if (deepid2_model_load(argv[1], &m) != DEEPID2_OK) {
        fprintf(stderr, "consumer_c: %s\n", deepid2_last_error());
        return 1;
    }
    size_t n_in = 0;
    deepid2_model_get_info(m, &info);
    deepid2_model_input_len(m, &n_in);
    float* x = calloc(n_in, sizeof(float));
    float* f = calloc((size_t)info.feature_dim, sizeof(float));
    double score = 0;
    int same = 0, rc = 1;
    if (x && f && deepid2_features(m, x, n_in, 1, f, (size_t)info.feature_dim) == DEEPID2_OK &&
        deepid2_verify(m, f, (size_t)info.feature_dim, f, (size_t)info.feature_dim, &score, &same) == DEEPID2_OK) {
        printf("consumer_c: D=%d score %.6g %s\n", info.feature_dim, score, same ? "same" : "different");
        rc = 0;
    } else {
        fprintf(stderr, "consumer_c: %s\n", deepid2_last_error());
    }
    free(x);
    free(f);
    deepid2_model_free(m);
    return rc;
}
