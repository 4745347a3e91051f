// The named patch layouts (patches.LAYOUTS), their tables generated into
// layouts.inc by cpp/tools/gen_layouts.py, and their patches: index k is
// region r, scale s, colour c with k = (r * n_scales + s) * n_colours + c.
#include <stdexcept>
#include <string>

#include "geometry.h"

namespace deepid2 {
namespace face {
namespace {

struct LayoutRegion {
    const char* name;
    bool square;             // "square" (square_size) or "rect" (rect_size)
    double cx, cy, width;    // Region.centre, Region.width
    int landmark;            // -1: none
    int mirror;              // the region's mirror image (PatchLayout.region_partner)
};

struct LayoutTable {
    const char* name;
    const LayoutRegion* regions;
    int n_regions;
    const double* scales;
    int n_scales;
    const bool* gray;        // per colour: "gray" or "rgb"
    int n_colours;
    int rect[2], square[2];  // (height, width)

    int size() const { return n_regions * n_scales * n_colours; }
};

#include "layouts.inc"

const LayoutTable& find_layout(const std::string& name) {
    for (const auto& t : kLayouts)
        if (name == t.name) return t;
    std::string known;
    for (const auto& t : kLayouts) known += (known.empty() ? "'" : ", '") + std::string(t.name) + "'";
    throw std::invalid_argument("unknown patch layout '" + name + "': choose from " + known);
}

void check_index(const LayoutTable& t, int index) {
    if (index < 0 || index >= t.size())
        throw std::invalid_argument("patch index " + std::to_string(index) + " out of range 0.." +
                                    std::to_string(t.size() - 1) + " of layout '" + t.name + "'");
}

}  // namespace

int layout_size(const std::string& layout) { return find_layout(layout).size(); }

PatchSpec layout_patch_spec(const std::string& layout, int index) {
    const LayoutTable& t = find_layout(layout);
    check_index(t, index);
    const int colour = index % t.n_colours, rs = index / t.n_colours;
    const LayoutRegion& r = t.regions[rs / t.n_scales];
    const int* size = r.square ? t.square : t.rect;
    PatchSpec s;
    s.cx = r.cx;
    s.cy = r.cy;
    s.region_width = r.width;
    s.landmark = r.landmark;
    s.scale = t.scales[rs % t.n_scales];
    s.height = size[0];
    s.width = size[1];
    s.gray = t.gray[colour];
    return s;
}

int layout_flip_partner(const std::string& layout, int index) {
    const LayoutTable& t = find_layout(layout);
    check_index(t, index);
    const int colour = index % t.n_colours, rs = index / t.n_colours;
    const int mirror = t.regions[rs / t.n_scales].mirror;
    return (mirror * t.n_scales + rs % t.n_scales) * t.n_colours + colour;
}

LayoutPatchShape layout_patch_shape(const std::string& layout, int index) {
    const PatchSpec s = layout_patch_spec(layout, index);
    return {s.height, s.width, s.gray ? 1 : 3};
}

std::vector<uint8_t> cut_layout_patch(const BgrView& aligned_bgr, const double landmarks[10],
                                      const std::string& layout, int index, bool flipped,
                                      int pad_y, int pad_x) {
    // the flipped counterpart is the mirror image of the mirror region's patch
    const int source = flipped ? layout_flip_partner(layout, index) : index;
    return cut_patch(aligned_bgr, landmarks, layout_patch_spec(layout, source), flipped, pad_y,
                     pad_x);
}

}  // namespace face
}  // namespace deepid2
