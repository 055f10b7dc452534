// Port of lipt_export/runtime/tiling.py. The arithmetic is kept in the same types and order as the Python (float64
// for arc placement and weights, weights stored as float32, blending in float32 with no fused multiply-add: see
// -ffp-contract=off in CMakeLists.txt) so plans are identical and blended outputs equal up to the model's own
// float rounding.
#include "liptexport/tiling.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace liptexport {
namespace {

// Python's floor division and the two alignment helpers built on it (negative values included).
std::int64_t floor_div(std::int64_t a, std::int64_t b) {
    std::int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}
std::int64_t align_down(std::int64_t v, std::int64_t m) { return floor_div(v, m) * m; }
std::int64_t align_up(std::int64_t v, std::int64_t m) { return -floor_div(-v, m) * m; }

Error tiling_error(const std::string& message) { return Error(Error::Kind::Tiling, message); }

std::vector<double> ramp(const std::vector<double>& x, double centre, double half) {
    std::vector<double> r(x.size());
    for (size_t k = 0; k < x.size(); ++k) {
        if (half <= 0) r[k] = x[k] >= centre ? 1.0 : 0.0;
        else r[k] = std::clamp((x[k] - (centre - half)) / (2 * half), 0.0, 1.0);
    }
    return r;
}

// numpy's "symmetric" padding index: the edge is repeated, the pattern has period 2n (any amount of padding).
int symmetric_index(int i, int n) {
    int j = i % (2 * n);
    return j < n ? j : 2 * n - 1 - j;
}

}  // namespace

int TilingPolicy::context_overlap(int multiple_of, int base) {
    return multiple_of > 1 ? std::max(base, WINDOWS_OF_CONTEXT * multiple_of) : base;
}

TilingPolicy TilingPolicy::from_io(const IOContract& io) {
    return TilingPolicy{io.multiple_of, io.recommended_tile, context_overlap(io.multiple_of, io.tile_overlap),
                        io.tile_required, io.default_tile};
}

TilingPolicy::Resolved TilingPolicy::resolve(std::optional<int> tile, std::optional<int> overlap_in,
                                             std::optional<int> default_tile) const {
    const int ov = overlap_in ? *overlap_in : overlap;
    if (ov < 0) throw tiling_error("overlap must be >= 0, got " + std::to_string(ov));
    if (!tile) {
        const std::optional<int> t = required ? std::optional<int>(recommended_tile) : default_tile;
        return {(t && *t) ? t : std::nullopt, ov};
    }
    if (*tile == 0) {
        if (required)
            throw tiling_error("this model must run tiled (memory grows quadratically with the image); use a tile of "
                               "at most " + std::to_string(recommended_tile) + " instead of 0");
        return {std::nullopt, ov};
    }
    if (*tile < 0) throw tiling_error("tile must be >= 0, got " + std::to_string(*tile));
    axis_arcs(2 * static_cast<std::int64_t>(*tile) + 1, *tile, ov, multiple_of);  // too small for the overlap: say so now
    return {tile, ov};
}

std::int64_t Arc::head() const { return std::max<std::int64_t>(0, start + size - length); }

std::vector<std::pair<std::int64_t, std::int64_t>> Arc::segments() const {
    if (!head()) return {{start, start + size}};
    return {{0, head()}, {start, length}};
}

std::vector<Arc> axis_arcs(std::int64_t length, std::int64_t tile, std::int64_t overlap, std::int64_t align) {
    if (length <= 0) throw std::invalid_argument("cannot tile an axis of length " + std::to_string(length));
    if (length <= tile) return {Arc{0, length, length}};
    const std::int64_t room = align_down(tile - (align - 1), align);  // a wrapped head is aligned up by < align
    const std::int64_t step = room - overlap - (align - 1);           // worst case after aligning starts down
    if (room < align || step < align)
        throw tiling_error("tile " + std::to_string(tile) + " is too small for overlap " + std::to_string(overlap) +
                           " with alignment " + std::to_string(align) + ": use a tile of at least " +
                           std::to_string(align_up(overlap + 2 * align - 1, align) + align - 1) +
                           " pixels or a smaller overlap");
    const auto n = static_cast<std::int64_t>(std::ceil(static_cast<double>(length) / static_cast<double>(step)));
    const auto per = static_cast<std::int64_t>(std::ceil(static_cast<double>(length) / static_cast<double>(n)));
    const std::int64_t size = std::min(room, align_up(per + overlap + align - 1, align));
    std::vector<Arc> arcs;
    for (std::int64_t i = 0; i < n; ++i) {
        // Python's round(): half to even, which nearbyint does in the default rounding mode
        const auto centre = static_cast<std::int64_t>(std::nearbyint(static_cast<double>(i * length) / static_cast<double>(n)));
        const std::int64_t start = align_down(centre, align);
        const std::int64_t head = start + size - length;
        const std::int64_t extra = head > 0 ? align_up(head, align) - head : 0;  // keep the tail aligned inside the tile
        arcs.push_back(Arc{start, size + extra, length});
    }
    return arcs;
}

std::vector<std::vector<float>> axis_weights(const std::vector<Arc>& arcs, int scale, double blend) {
    const size_t n = arcs.size();
    if (n == 1) return {std::vector<float>(static_cast<size_t>(scale * arcs[0].size), 1.0f)};
    const auto length = static_cast<double>(arcs[0].length);
    std::vector<std::pair<double, double>> seams;  // (centre, half-width) in unrolled LR pixels, between arc i and i+1
    for (size_t i = 0; i < n; ++i) {
        const auto& arc = arcs[i];
        const std::int64_t nxt = i + 1 < n ? arcs[i + 1].start : arcs[0].start + arcs[0].length;
        const std::int64_t ov = arc.start + arc.size - nxt;
        if (ov < 0) throw std::invalid_argument("tiles must cover the axis without gaps");
        seams.emplace_back(static_cast<double>(nxt + arc.start + arc.size) / 2.0,
                           std::max(0.0, blend) * static_cast<double>(ov) / 2.0);
    }
    for (size_t i = 0; i < n; ++i) {  // neighbouring ramps must not meet: then weights sum to 1
        const double c = seams[i].first;
        const double prev_c = seams[(i + n - 1) % n].first - (i == 0 ? length : 0.0);
        const double next_c = seams[(i + 1) % n].first + (i == n - 1 ? length : 0.0);
        seams[i].second = std::min({seams[i].second, (c - prev_c) / 2.0, (next_c - c) / 2.0});
    }
    std::vector<std::vector<float>> weights;
    for (size_t i = 0; i < n; ++i) {
        const auto& arc = arcs[i];
        const size_t m = static_cast<size_t>(scale * arc.size);
        std::vector<double> x(m);
        for (size_t k = 0; k < m; ++k)
            x[k] = static_cast<double>(arc.start) + (static_cast<double>(k) + 0.5) / scale;  // unrolled LR coords
        const auto& up = seams[(i + n - 1) % n];
        const auto rise = ramp(x, up.first - (i == 0 ? length : 0.0), up.second);
        const auto fall = ramp(x, seams[i].first, seams[i].second);
        std::vector<double> w(m);
        for (size_t k = 0; k < m; ++k) w[k] = rise[k] * (1.0 - fall[k]);
        if (arc.head()) {  // stacking order: head (unrolled positions past the end) first, then the tail
            const size_t split = static_cast<size_t>(scale * (arc.length - arc.start));
            std::rotate(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(split), w.end());
        }
        weights.emplace_back(w.begin(), w.end());  // float64 -> float32, as .astype(np.float32)
    }
    return weights;
}

InferFn pad_to_min(InferFn infer, int scale, int min_hw) {
    if (min_hw <= 1) return infer;
    return [infer = std::move(infer), scale, min_hw](const Planes& lr) -> Planes {
        const int ph = std::max(0, min_hw - lr.h), pw = std::max(0, min_hw - lr.w);
        if (!ph && !pw) return infer(lr);
        Planes padded(lr.c, lr.h + ph, lr.w + pw);
        for (int ch = 0; ch < lr.c; ++ch)
            for (int y = 0; y < padded.h; ++y)
                for (int x = 0; x < padded.w; ++x)
                    padded.at(ch, y, x) = lr.at(ch, symmetric_index(y, lr.h), symmetric_index(x, lr.w));
        const Planes big = infer(padded);
        Planes out(big.c, scale * lr.h, scale * lr.w);
        for (int ch = 0; ch < out.c; ++ch)
            for (int y = 0; y < out.h; ++y)
                std::copy_n(&big.data[(static_cast<size_t>(ch) * big.h + y) * big.w], out.w, &out.at(ch, y, 0));
        return out;
    };
}

TiledUpscaler::TiledUpscaler(InferFn infer, int scale, std::optional<int> tile, int overlap, int multiple_of,
                             double blend)
    : infer_(std::move(infer)), scale_(scale), tile_(tile && *tile ? tile : std::nullopt), overlap_(overlap),
      multiple_of_(std::max(1, multiple_of)), blend_(blend) {
    if (overlap < 0) throw tiling_error("overlap must be >= 0, got " + std::to_string(overlap));
    if (!(blend >= 0.0 && blend <= 1.0)) throw std::invalid_argument("blend must be in [0, 1]");
}

std::vector<Arc> TiledUpscaler::arcs(std::int64_t length) const {
    if (!tile_) return {Arc{0, length, length}};
    return axis_arcs(length, *tile_, overlap_, multiple_of_);
}

std::size_t TiledUpscaler::count_tiles(int h, int w) const { return arcs(h).size() * arcs(w).size(); }

Planes TiledUpscaler::run(const Planes& lr, const std::function<void()>& progress) const {
    const int s = scale_;
    const auto ys = arcs(lr.h), xs = arcs(lr.w);
    const auto wys = axis_weights(ys, s, blend_), wxs = axis_weights(xs, s, blend_);
    Planes out(lr.c, s * lr.h, s * lr.w);
    for (size_t iy = 0; iy < ys.size(); ++iy) {
        const auto rows = ys[iy].segments();
        std::vector<int> src_rows, out_rows;  // tile row -> LR row; tile output row -> output row
        for (auto [r0, r1] : rows)
            for (auto r = r0; r < r1; ++r) src_rows.push_back(static_cast<int>(r));
        for (int r : src_rows)
            for (int k = 0; k < s; ++k) out_rows.push_back(s * r + k);
        for (size_t ix = 0; ix < xs.size(); ++ix) {
            std::vector<int> src_cols, out_cols;
            for (auto [c0, c1] : xs[ix].segments())
                for (auto c = c0; c < c1; ++c) src_cols.push_back(static_cast<int>(c));
            for (int c : src_cols)
                for (int k = 0; k < s; ++k) out_cols.push_back(s * c + k);
            Planes tile(lr.c, static_cast<int>(src_rows.size()), static_cast<int>(src_cols.size()));
            for (int ch = 0; ch < lr.c; ++ch)
                for (int y = 0; y < tile.h; ++y)
                    for (int x = 0; x < tile.w; ++x) tile.at(ch, y, x) = lr.at(ch, src_rows[y], src_cols[x]);
            const Planes y = infer_(tile);
            if (y.c != lr.c || y.h != s * tile.h || y.w != s * tile.w)
                throw Error(Error::Kind::Artifact,
                            "the model returned (" + std::to_string(y.c) + ", " + std::to_string(y.h) + ", " +
                                std::to_string(y.w) + ") for a tile needing (" + std::to_string(lr.c) + ", " +
                                std::to_string(s * tile.h) + ", " + std::to_string(s * tile.w) +
                                "): is the manifest's scale " + std::to_string(s) + " right?");
            const auto& wy = wys[iy];
            const auto& wx = wxs[ix];
            for (int ch = 0; ch < y.c; ++ch)
                for (int p = 0; p < y.h; ++p) {
                    float* dst = &out.data[(static_cast<size_t>(ch) * out.h + out_rows[p]) * out.w];
                    const float* src = &y.data[(static_cast<size_t>(ch) * y.h + p) * y.w];
                    for (int q = 0; q < y.w; ++q) {
                        const float weight = wy[p] * wx[q];  // (wy[:, None] * wx[None, :]) in float32
                        const float weighted = src[q] * weight;
                        dst[out_cols[q]] = dst[out_cols[q]] + weighted;
                    }
                }
            if (progress) progress();
        }
    }
    return out;
}

}  // namespace liptexport
