// Tiled inference for any image size: a faithful port of lipt_export/runtime/tiling.py (TilingPolicy, axis_arcs,
// axis_weights, TiledRunner's tile order and float32 blending, PadToMin), so a C++ server cuts, runs and blends
// tiles exactly as `lipt-export upscale` does. The module doc of tiling.py explains the cyclic layout (a tile that
// runs past the border is stacked as [head rows 0..b) + [tail rows t..H)) and the seam-centred linear blend.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "liptexport/export.hpp"

namespace liptexport {

inline constexpr int WINDOWS_OF_CONTEXT = 8;
inline constexpr int BASE_OVERLAP = 16;
// upscale's LR tile when none is asked for and the manifest states none (io.tiling.default_tile, measured per family);
// images up to it run whole
inline constexpr int DEFAULT_TILE = 512;
inline constexpr double DEFAULT_BLEND = 0.25;

// How one model is tiled (TilingPolicy in Python): what the manifest's io.size/io.tiling say, with the context
// overlap rule applied.
struct TilingPolicy {
    int multiple_of = 1;
    int recommended_tile = 256;
    int overlap = BASE_OVERLAP;
    bool required = false;
    int default_tile = DEFAULT_TILE;  // the model's tile when none is asked for (io.tiling.default_tile)

    // Windowed models see several windows away: at least 8 windows of overlap (docs/serving.md, measured).
    static int context_overlap(int multiple_of, int base = BASE_OVERLAP);
    // From the manifest; an older manifest's smaller overlap is raised to the context rule.
    static TilingPolicy from_io(const IOContract& io);

    struct Resolved {
        std::optional<int> tile;  // nullopt: whole images
        int overlap = 0;
    };
    // Explicit values win; no tile means the recommended tile when tiling is required, else `default_tile` (nullopt:
    // whole images); 0 means whole images unless tiling is required. Throws Error(Tiling) with Python's messages.
    Resolved resolve(std::optional<int> tile, std::optional<int> overlap, std::optional<int> default_tile) const;
};

// A tile's extent along one axis seen as a cycle of `length` pixels: [start, start + size) unrolled. An arc running
// past the end is assembled as the head [0, start + size - length) followed by the tail [start, length).
struct Arc {
    std::int64_t start = 0, size = 0, length = 0;
    std::int64_t head() const;
    std::vector<std::pair<std::int64_t, std::int64_t>> segments() const;  // source ranges in stacking order
};

// Arcs covering the axis as a cycle (axis_arcs): each at most `tile` long, neighbours sharing at least `overlap`
// pixels, starts and wrapped heads multiples of `align`. An axis up to `tile` long is one whole arc.
std::vector<Arc> axis_arcs(std::int64_t length, std::int64_t tile, std::int64_t overlap, std::int64_t align = 1);
// Per-arc weights in output pixels (stacking order), a partition of unity over the axis (axis_weights).
std::vector<std::vector<float>> axis_weights(const std::vector<Arc>& arcs, int scale, double blend = DEFAULT_BLEND);

// A float32 image as channel planes (C, H, W), row-major: one item of an NCHW batch.
struct Planes {
    int c = 0, h = 0, w = 0;
    std::vector<float> data;
    Planes() = default;
    Planes(int c_, int h_, int w_) : c(c_), h(h_), w(w_), data(static_cast<size_t>(c_) * h_ * w_, 0.0f) {}
    float& at(int ch, int y, int x) { return data[(static_cast<size_t>(ch) * h + y) * w + x]; }
    float at(int ch, int y, int x) const { return data[(static_cast<size_t>(ch) * h + y) * w + x]; }
};

// One inference: a (C, h, w) input -> (C, scale*h, scale*w) output (a runner's infer on a batch of one).
using InferFn = std::function<Planes(const Planes&)>;

// `infer` taking inputs below min_hw too: padded by symmetric reflection (numpy's "symmetric", any amount) at the
// bottom/right up to min_hw and the output cropped (PadToMin; loader.padded_to_min_size uses it when min > 1).
InferFn pad_to_min(InferFn infer, int scale, int min_hw);

// Runs `infer` tile by tile and blends the tiles (TiledRunner): tiles in row-major order, each tile's output
// multiplied by the float32 product of its row and column weights and added into a zeroed float32 output, as
// upscale's spilled sum does, so the result equals the Python one for equal tile outputs.
class TiledUpscaler {
public:
    TiledUpscaler(InferFn infer, int scale, std::optional<int> tile, int overlap, int multiple_of,
                  double blend = DEFAULT_BLEND);
    std::size_t count_tiles(int h, int w) const;
    Planes run(const Planes& lr, const std::function<void()>& progress = {}) const;
    std::optional<int> tile() const { return tile_; }
    int overlap() const { return overlap_; }

private:
    InferFn infer_;
    int scale_;
    std::optional<int> tile_;
    int overlap_;
    int multiple_of_;
    double blend_;
    std::vector<Arc> arcs(std::int64_t length) const;
};

}  // namespace liptexport
