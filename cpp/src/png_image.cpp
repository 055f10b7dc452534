// PNG reading and writing with libpng's classic API (no colour or gamma transforms beyond the ones Pillow applies),
// and the alpha plane's bicubic upscale as Pillow computes it. libpng reports errors by longjmp: each libpng call
// sequence lives in a small function with plain locals only, and the C++ objects it fills live in the caller.
#include "liptexport/png_image.hpp"

#include <png.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace liptexport {
namespace fs = std::filesystem;

namespace {

Error image_error(const fs::path& path, const std::string& why) {
    return Error(Error::Kind::Image, "cannot read image " + path.string() + " (" + why +
                                         "); replace or remove it (supported: PNG; lipt-export upscale also reads "
                                         "JPEG, WebP, BMP, TIFF)");
}

void on_png_error(png_structp png, png_const_charp message) {
    auto* why = static_cast<std::string*>(png_get_error_ptr(png));
    why->assign(message ? message : "libpng error");
    png_longjmp(png, 1);
}
void on_png_warning(png_structp, png_const_charp) {}  // benign chunk complaints: Pillow is silent about them too

struct RawPng {
    png_uint_32 width = 0, height = 0;
    int bit_depth = 0, color_type = 0, channels = 0;
    std::vector<unsigned char> pixels;  // rows after the transforms below; 16-bit samples big-endian
    std::vector<unsigned char> icc;
    std::vector<unsigned char> exif;
};

// 0 on success; on failure `why` says what libpng said.
int read_png_raw(FILE* f, RawPng* out, std::string* why) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, why, on_png_error, on_png_warning);
    if (!png) return 1;
    png_infop info = png_create_info_struct(png);
    png_infop end = png_create_info_struct(png);
    std::vector<png_bytep>* rows = nullptr;
    if (setjmp(png_jmpbuf(png))) {
        delete rows;
        png_destroy_read_struct(&png, &info, &end);
        return 1;
    }
    png_init_io(png, f);
    png_read_info(png, info);
    const int color = png_get_color_type(png, info);
    const int depth = png_get_bit_depth(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE) {  // Pillow: P -> RGBA when it has transparency, else RGB
        png_set_palette_to_rgb(png);
        if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    }
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);  // L;1/2/4 scaled to 0..255
    if (depth == 16 && color != PNG_COLOR_TYPE_GRAY) png_set_strip_16(png);  // Pillow keeps the high byte
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    out->width = png_get_image_width(png, info);
    out->height = png_get_image_height(png, info);
    out->bit_depth = png_get_bit_depth(png, info);
    out->color_type = png_get_color_type(png, info);
    out->channels = png_get_channels(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    out->pixels.resize(rowbytes * out->height);
    rows = new std::vector<png_bytep>(out->height);
    for (png_uint_32 y = 0; y < out->height; ++y) (*rows)[y] = out->pixels.data() + y * rowbytes;
    png_read_image(png, rows->data());
    png_read_end(png, end);
    png_charp name = nullptr;
    int compression = 0;
    png_bytep profile = nullptr;
    png_uint_32 length = 0;
    if (png_get_iCCP(png, info, &name, &compression, &profile, &length) && profile)
        out->icc.assign(profile, profile + length);
    png_bytep exif = nullptr;
    png_uint_32 exif_len = 0;
    if ((png_get_eXIf_1(png, info, &exif_len, &exif) || png_get_eXIf_1(png, end, &exif_len, &exif)) && exif)
        out->exif.assign(exif, exif + exif_len);
    delete rows;
    png_destroy_read_struct(&png, &info, &end);
    return 0;
}

// The EXIF orientation tag (0x0112) of a TIFF-structured eXIf blob, 1 (upright) when absent or unreadable.
int exif_orientation(const std::vector<unsigned char>& b) {
    if (b.size() < 8) return 1;
    const bool le = b[0] == 'I' && b[1] == 'I';
    if (!le && !(b[0] == 'M' && b[1] == 'M')) return 1;
    auto u16 = [&](size_t o) -> unsigned { return o + 2 > b.size() ? 0 : le ? b[o] | b[o + 1] << 8 : b[o] << 8 | b[o + 1]; };
    auto u32 = [&](size_t o) -> size_t {
        return o + 4 > b.size() ? 0 : le ? size_t(u16(o)) | size_t(u16(o + 2)) << 16 : size_t(u16(o)) << 16 | u16(o + 2);
    };
    const size_t ifd = u32(4);
    const unsigned count = u16(ifd);
    for (unsigned k = 0; k < count; ++k) {
        const size_t e = ifd + 2 + 12 * size_t(k);
        if (e + 12 > b.size()) break;
        if (u16(e) == 0x0112) return static_cast<int>(u16(e + 8));
    }
    return 1;
}

// Pillow's precompute_coeffs (Resample.c) for an upscale of a whole axis: bounds and normalised double weights.
struct Coeffs {
    int ksize = 0;
    std::vector<int> xmin, xmax;
    std::vector<double> k;
};

double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

Coeffs precompute_coeffs(int in_size, int out_size) {
    const double support_base = 2.0;  // bicubic
    const double scale = static_cast<double>(in_size) / out_size;  // box (0, in_size): in1 - in0 exact in float
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = support_base * filterscale;
    Coeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.xmin.resize(out_size);
    c.xmax.resize(out_size);
    c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0.0);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = 0.0 + (xx + 0.5) * scale;
        double ww = 0.0;
        const double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double* k = &c.k[static_cast<size_t>(xx) * c.ksize];
        for (int x = 0; x < xmax; ++x) {
            const double w = bicubic_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; ++x)
            if (ww != 0.0) k[x] /= ww;
        c.xmin[xx] = xmin;
        c.xmax[xx] = xmax;
    }
    return c;
}

struct RawOut {
    png_uint_32 width, height;
    int bit_depth, color_type;
    const std::vector<unsigned char>* icc;
    const std::vector<unsigned char>* pixels;  // rows, 16-bit samples big-endian
    size_t rowbytes;
};

int write_png_raw(FILE* f, const RawOut* o, std::string* why) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, why, on_png_error, on_png_warning);
    if (!png) return 1;
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return 1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, o->width, o->height, o->bit_depth, o->color_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (!o->icc->empty())
        png_set_iCCP(png, info, "ICC profile", PNG_COMPRESSION_TYPE_BASE, o->icc->data(),
                     static_cast<png_uint_32>(o->icc->size()));
    png_write_info(png, info);
    for (png_uint_32 y = 0; y < o->height; ++y) png_write_row(png, o->pixels->data() + y * o->rowbytes);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return 0;
}

// upscale._to_uint for one value: clip(v * peak + 0.5, 0, peak), truncated (float32 arithmetic, as numpy does).
inline unsigned to_uint(float v, float peak) {
    float x = v * peak;
    x = x + 0.5f;
    if (!(x > 0.0f)) return 0;  // NaN too
    return static_cast<unsigned>(x < peak ? x : peak);
}

}  // namespace

Planes Image::rgb() const {
    Planes p(3, height, width);
    const float maxval = bits == 16 ? 65535.0f : 255.0f;
    const int step = gray ? 1 : 3;
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x)
            for (int ch = 0; ch < 3; ++ch) {
                const auto code = codes[(static_cast<size_t>(y) * width + x) * step + (gray ? 0 : ch)];
                p.at(ch, y, x) = static_cast<float>(code) / maxval;
            }
    return p;
}

Image load_png(const fs::path& path) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!f) throw image_error(path, std::string("OSError: ") + std::strerror(errno));
    unsigned char sig[8] = {};
    if (std::fread(sig, 1, 8, f.get()) != 8 || png_sig_cmp(sig, 0, 8) != 0)
        throw image_error(path, "not a PNG file; lipt-upscale-cpp reads PNG only");
    std::rewind(f.get());
    RawPng raw;
    std::string why;
    if (read_png_raw(f.get(), &raw, &why) != 0) throw image_error(path, "libpng: " + why);
    if (const int o = exif_orientation(raw.exif); o > 1 && o <= 8)
        throw Error(Error::Kind::Image, path.string() + " has EXIF orientation " + std::to_string(o) +
                                            ", which lipt-upscale-cpp does not apply; save it upright or use "
                                            "lipt-export upscale (it applies the orientation)");
    Image img;
    img.width = static_cast<int>(raw.width);
    img.height = static_cast<int>(raw.height);
    img.icc = std::move(raw.icc);
    const bool has_alpha = raw.color_type & PNG_COLOR_MASK_ALPHA;
    img.gray = !(raw.color_type & PNG_COLOR_MASK_COLOR);
    img.bits = raw.bit_depth == 16 ? 16 : 8;
    const int color_channels = img.gray ? 1 : 3;
    const size_t n = static_cast<size_t>(img.width) * img.height;
    img.codes.resize(n * color_channels);
    if (has_alpha) img.alpha.emplace(n);
    const int bytes = img.bits / 8;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char* px = raw.pixels.data() + i * raw.channels * bytes;
        for (int ch = 0; ch < color_channels; ++ch)
            img.codes[i * color_channels + ch] =
                bytes == 2 ? static_cast<std::uint16_t>(px[2 * ch] << 8 | px[2 * ch + 1]) : px[ch];
        if (has_alpha) (*img.alpha)[i] = static_cast<float>(px[color_channels]) / 255.0f;  // 8-bit here (strip_16)
    }
    return img;
}

std::vector<std::uint8_t> upscale_alpha_bicubic(const std::vector<float>& alpha, int h, int w, int scale) {
    const int oh = h * scale, ow = w * scale;
    std::vector<float> result(alpha);
    int cur_w = w;
    if (ow != w) {  // horizontal pass first (Pillow's ImagingResampleInner), float32 intermediate
        const Coeffs c = precompute_coeffs(w, ow);
        std::vector<float> tmp(static_cast<size_t>(h) * ow);
        for (int y = 0; y < h; ++y)
            for (int xx = 0; xx < ow; ++xx) {
                const double* k = &c.k[static_cast<size_t>(xx) * c.ksize];
                double ss = 0.0;
                for (int x = 0; x < c.xmax[xx]; ++x) ss += result[static_cast<size_t>(y) * w + x + c.xmin[xx]] * k[x];
                tmp[static_cast<size_t>(y) * ow + xx] = static_cast<float>(ss);
            }
        result.swap(tmp);
        cur_w = ow;
    }
    if (oh != h) {
        const Coeffs c = precompute_coeffs(h, oh);
        std::vector<float> tmp(static_cast<size_t>(oh) * cur_w);
        for (int yy = 0; yy < oh; ++yy) {
            const double* k = &c.k[static_cast<size_t>(yy) * c.ksize];
            for (int xx = 0; xx < cur_w; ++xx) {
                double ss = 0.0;
                for (int y = 0; y < c.xmax[yy]; ++y) ss += result[static_cast<size_t>(y + c.xmin[yy]) * cur_w + xx] * k[y];
                tmp[static_cast<size_t>(yy) * cur_w + xx] = static_cast<float>(ss);
            }
        }
        result.swap(tmp);
    }
    std::vector<std::uint8_t> out(result.size());
    for (size_t i = 0; i < result.size(); ++i) out[i] = static_cast<std::uint8_t>(to_uint(result[i], 255.0f));
    return out;
}

void save_png(const fs::path& path, const Planes& out, const Image& src,
              const std::optional<std::vector<std::uint8_t>>& alpha) {
    const int bits = alpha ? 8 : src.bits;  // no 16-bit gray+alpha mode in Pillow: alpha outputs are 8-bit
    const int color_channels = src.gray ? 1 : 3;
    const int channels = color_channels + (alpha ? 1 : 0);
    const float peak = bits == 16 ? 65535.0f : 255.0f;
    const size_t rowbytes = static_cast<size_t>(out.w) * channels * (bits / 8);
    std::vector<unsigned char> pixels(rowbytes * out.h);
    for (int y = 0; y < out.h; ++y)
        for (int x = 0; x < out.w; ++x) {
            unsigned v[4] = {};
            if (src.gray) {  // as if the RGB result were saved and converted to L: clamp, then luma
                const float r = std::clamp(out.at(0, y, x), 0.0f, 1.0f), g = std::clamp(out.at(1, y, x), 0.0f, 1.0f),
                            b = std::clamp(out.at(2, y, x), 0.0f, 1.0f);
                v[0] = to_uint(0.299f * r + 0.587f * g + 0.114f * b, peak);
            } else {
                for (int ch = 0; ch < 3; ++ch) v[ch] = to_uint(out.at(ch, y, x), peak);
            }
            if (alpha) v[color_channels] = (*alpha)[static_cast<size_t>(y) * out.w + x];
            unsigned char* px = pixels.data() + y * rowbytes + static_cast<size_t>(x) * channels * (bits / 8);
            for (int ch = 0; ch < channels; ++ch) {
                if (bits == 16) {
                    px[2 * ch] = static_cast<unsigned char>(v[ch] >> 8);
                    px[2 * ch + 1] = static_cast<unsigned char>(v[ch] & 0xff);
                } else {
                    px[ch] = static_cast<unsigned char>(v[ch]);
                }
            }
        }
    static const int color_types[] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                      PNG_COLOR_TYPE_RGB_ALPHA};
    const RawOut raw{static_cast<png_uint_32>(out.w), static_cast<png_uint_32>(out.h), bits, color_types[channels],
                     &src.icc, &pixels, rowbytes};
    // a temp name beside the output, renamed when complete (fileio.save_atomic's pattern: .NAME.XXXXXX.tmp)
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    std::string tmpl = (dir / ("." + path.filename().string() + ".XXXXXX.tmp")).string();
    const int fd = mkstemps(tmpl.data(), 4);
    if (fd < 0) throw Error(Error::Kind::Usage, "cannot write " + dir.string() + ": " + std::strerror(errno) + "; choose another OUTPUT");
    FILE* f = fdopen(fd, "wb");
    std::string why;
    const bool ok = f && write_png_raw(f, &raw, &why) == 0;
    const mode_t mask = umask(0);
    umask(mask);
    const bool closed = f ? std::fclose(f) == 0 : (::close(fd), false);
    if (!ok || !closed || ::chmod(tmpl.c_str(), 0666 & ~mask) != 0 || std::rename(tmpl.c_str(), path.c_str()) != 0) {
        const std::string err = why.empty() ? std::strerror(errno) : why;
        std::remove(tmpl.c_str());
        throw Error(Error::Kind::Usage, "cannot write " + path.string() + " (" + err + "); choose another OUTPUT");
    }
}

}  // namespace liptexport
