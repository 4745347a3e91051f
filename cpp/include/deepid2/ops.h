// deepid2 CPU ops: forward and backward of every layer of a DeepID2 ConvNet.
//
// Conventions (the same for every backend, CPU and GPU):
// - Layout: NCHW, float32, C-contiguous. Pointers are raw and never owned.
// - Shapes are passed explicitly; every function checks them and throws
//   std::invalid_argument (bad shape/argument) before touching memory.
// - Outputs written with "=" are fully overwritten (callers need not zero
//   them). Parameter gradients (dw, db) ACCUMULATE with "+=", so gradients of
//   a weight used twice simply add up; zero them before the first backward.
// - ReLU is fused into the forward. The backward takes the saved output y and
//   masks dy where y <= 0.
// - Results do not depend on the number of OpenMP threads: work is split into
//   blocks by a rule that depends only on the shapes, and partial sums are
//   added in block order.
#pragma once
#include <cstdint>

namespace deepid2 {

// ---------------------------------------------------------------------------
// Locally-shared convolution (lsconv): kernel kh x kw, stride 1, no padding.
//   x: N x C x H x W  ->  y: N x K x OH x OW,  OH = H - kh + 1, OW = W - kw + 1
// The output map is cut into a grid of regions of rh x rw output neurons;
// the last region row/column may be smaller. RY = ceil(OH/rh),
// RX = ceil(OW/rw). Region (ry, rx) has its own weights and biases:
//   w: RY x RX x K x C x kh x kw,   b: RY x RX x K
//   y[n,k,oy,ox] = act(b[ry,rx,k] + sum_{c,i,j} w[ry,rx,k,c,i,j] x[n,c,oy+i,ox+j])
//   with ry = oy / rh, rx = ox / rw.
// rh = OH, rw = OW is an ordinary convolution; rh = rw = 1 is locally
// connected (totally unshared).
struct LsconvShape {
    int n, c, h, w;   // input
    int k, kh, kw;    // output maps, kernel size
    int rh, rw;       // region size in output neurons
    int oh() const { return h - kh + 1; }
    int ow() const { return w - kw + 1; }
    int ry() const { return (oh() + rh - 1) / rh; }
    int rx() const { return (ow() + rw - 1) / rw; }
    void check() const;  // throws std::invalid_argument
};

void lsconv_forward(const LsconvShape& s, const float* x, const float* w,
                    const float* b, bool relu, float* y);

// dx = (may be nullptr to skip), dw += , db += .
void lsconv_backward(const LsconvShape& s, const float* x, const float* w,
                     const float* y, const float* dy, bool relu,
                     float* dx, float* dw, float* db);

// lsconv followed by an s x s max-pool (see below), as one op: the same
// results as maxpool_forward(lsconv_forward(...)), without the unpooled
// output ever reaching memory. yp, argmax: N x K x (OH/s) x (OW/s).
void lsconv_pool_forward(const LsconvShape& s, const float* x, const float* w,
                         const float* b, bool relu, int ps, float* yp, int32_t* argmax);

// The backward of lsconv_pool_forward from the pooled gradient dyp: the same
// results as lsconv_backward(..., y, maxpool_backward(dyp, argmax), ...),
// where the ReLU mask y > 0 at the argmax positions is yp > 0, summed in
// another order from the nonzero terms only (so a term zeroed by the pool or
// the mask never turns an inf in x or w into a NaN). An argmax outside its
// window throws and leaves dw, db untouched (dx unspecified).
void lsconv_pool_backward(const LsconvShape& s, const float* x, const float* w,
                          const float* yp, const int32_t* argmax, const float* dyp,
                          bool relu, int ps, float* dx, float* dw, float* db);

// ---------------------------------------------------------------------------
// Max-pooling: s x s windows, stride s, floor: OH = H / s, OW = W / s.
// argmax holds, per output, the index oy'*W + ox' of the winning input inside
// its H x W plane; ties go to the first maximum in row-major window order.
void maxpool_forward(int n, int c, int h, int w, int s, const float* x,
                     float* y, int32_t* argmax);
// dx = (whole N x C x H x W, zeros where nothing was selected). An argmax
// outside its window throws; dx may then have been partly written.
void maxpool_backward(int n, int c, int h, int w, int s, const float* dy,
                      const int32_t* argmax, float* dx);

// ---------------------------------------------------------------------------
// Dense over a concatenation of inputs: y = act([x_0, x_1, ...] W + b)
//   x_i: N x d_i (row-major), W: (sum d_i) x M, b: M, y: N x M.
void dense_forward(int n, int n_inputs, const int* dims, const float* const* xs,
                   int m, const float* w, const float* b, bool relu, float* y);
// dxs[i] = (entries may be nullptr to skip), dw += , db += .
void dense_backward(int n, int n_inputs, const int* dims, const float* const* xs,
                    int m, const float* w, const float* y, const float* dy,
                    bool relu, float* const* dxs, float* dw, float* db);

// ---------------------------------------------------------------------------
// Joint identification-verification loss.
//
// Identification: softmax cross-entropy over n_classes, averaged over the
// batch of N: ident = -1/N sum_i log softmax(logits_i)[label_i].
//
// Verification on P pairs (a[p], b[p]) of rows of features (N x D), with
// y[p] = +1 (same identity) or -1 (different), averaged over the P pairs
// (verif = 0 when P = 0):
//   L2     : same 1/2 d^2, different 1/2 max(0, m - d)^2,  d = ||fa - fb||_2
//   L2_POS : same 1/2 d^2, different pairs contribute 0 (still counted in P)
//   L1     : as L2 with d = ||fa - fb||_1 (sign(0) = 0)
//   COSINE : 1/2 (t - sigmoid(w cos + b))^2, t = 1 same / 0 different,
//            cos = fa.fb / sqrt((|fa|^2 + eps)(|fb|^2 + eps)), eps = 1e-8
// Where d = 0 for an L2 different pair, the direction is undefined and the
// feature gradient is taken as 0 (dm is still m).
// Verification parameters: L2/L2_POS/L1: params = {m}; COSINE: {w, b}.
//
// total = ident + lambda * verif.
// Outputs: dlogits = d total / d logits (N x n_classes, written "="),
//          dfeatures = d total / d features, the verification part only
//          (N x D, written "="), dparams = d total / d params (written "=").
enum class Verif { L2 = 0, L2_POS = 1, L1 = 2, COSINE = 3 };
int verif_n_params(Verif v);

struct JointLossResult {
    double total, ident, verif;
    int64_t correct;  // top-1 correct (first maximum wins ties)
};

JointLossResult joint_loss(int n, int n_classes, const float* logits,
                           const int32_t* labels, int d, const float* features,
                           int n_pairs, const int32_t* pair_a,
                           const int32_t* pair_b, const int32_t* pair_y,
                           Verif variant, float lambda, const float* params,
                           float* dlogits, float* dfeatures, float* dparams);

// ---------------------------------------------------------------------------
// Regression loss (landmarks): squared error averaged over the batch,
//   loss = 1/N sum_i 1/2 ||pred_i - target_i||^2,   pred, target: N x D.
// dpred = (pred - target) / N, written "=". Returns the loss.
double regression_loss(int n, int d, const float* pred, const float* target, float* dpred);

// ---------------------------------------------------------------------------
// Momentum SGD with weight decay, in place, elementwise:
//   v = momentum * v - lr * (g + weight_decay * p);  p += v
void sgd_update(int64_t count, float* param, const float* grad, float* velocity,
                float lr, float momentum, float weight_decay);

// Number of OpenMP threads the ops will use (1 without OpenMP).
int max_threads();

}  // namespace deepid2
