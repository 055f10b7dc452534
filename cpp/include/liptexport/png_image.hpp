// PNG in and out for lipt-upscale-cpp, treating files as lipt_export/images.py::load_image (Pillow) does and writing
// them as runtime/upscale.py does:
//   * gray (1/2/4/8-bit, and 16-bit kept at 16 bits) runs as RGB with equal channels and is saved gray again: the
//     luma (0.299, 0.587, 0.114) of the clamped RGB result;
//   * 16-bit RGB(A) and gray+alpha are read at 8 bits (Pillow keeps the high byte of each sample, libpng's strip_16);
//   * palette images become RGB, or RGBA when they carry transparency; tRNS on gray/RGB images is ignored;
//   * alpha (RGBA, LA) is upscaled with Pillow's BICUBIC on the float image and written 8-bit beside the colour;
//   * the ICC profile is kept; an EXIF orientation other than "upright" is refused (Python applies it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "liptexport/tiling.hpp"

namespace liptexport {

struct Image {
    int width = 0, height = 0;
    int bits = 8;       // 8 or 16 (16 only for gray without alpha, as Pillow's I;16)
    bool gray = false;  // saved gray again
    std::vector<std::uint16_t> codes;  // H x W x (gray ? 1 : 3) samples
    std::optional<std::vector<float>> alpha;  // H x W, alpha / 255 in float32, or none
    std::vector<unsigned char> icc;  // the iCCP profile (uncompressed), empty when none

    // (3, H, W) float32 in [0, 1]: code / 255 or / 65535 in float32 (images.CodedRGB), gray replicated.
    Planes rgb() const;
};

Image load_png(const std::filesystem::path& path);

// Pillow's Image.resize(BICUBIC) of a float ("F") plane (H x W) to (scale*H, scale*W): separable, horizontal pass
// first, double coefficients and sums, float32 between passes; then 8-bit as upscale._upscale_alpha rounds it.
std::vector<std::uint8_t> upscale_alpha_bicubic(const std::vector<float>& alpha, int h, int w, int scale);

// The upscaled float32 result (3, sH, sW) -> PNG at `src`'s bit depth and colour (upscale._to_uint: clamp,
// * peak + 0.5, truncated), plus the 8-bit alpha plane when given; written to a temp name beside `path` and renamed.
void save_png(const std::filesystem::path& path, const Planes& out, const Image& src,
              const std::optional<std::vector<std::uint8_t>>& alpha);

}  // namespace liptexport
