//! Preprocessing parity with the peers pochitrain users run: the `dataset` stage's image
//! decoding and `resize` against Pillow and torchvision in the managed toolchain, on
//! images the toolchain's Pillow generates (odd sizes, upscales, 40x downscales, every
//! 8-bit mode a PNG or BMP holds, JPEGs with several subsamplings).

use crate::common::Project;
use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use serde_json::{Value, json};

/// Writes each case's image with Pillow, then its reference: `pil_loader` (open, convert
/// to RGB), then torchvision's `Resize(size, interpolation)` when the case has a size,
/// then (`full`) `CenterCrop`, `ToTensor` and `Normalize`. References are C x H x W.
const GENERATE: &str = r#"
import json, os, sys
import numpy as np
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

def png16(path, samples):
    """A 16-bit RGB PNG (Pillow cannot write one), written by hand."""
    import struct, zlib
    h, w = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

cases = json.load(open(sys.argv[1]))
rng = np.random.default_rng(7)
os.makedirs("ref", exist_ok=True)
for c in cases:
    w, h = c["w"], c["h"]
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * 3 + yy * 5) % 256], -1)
    noise = rng.integers(0, 256, (h, w, 3))
    rgb = np.where(rng.random((h, w, 1)) < 0.3, noise, smooth).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if c["mode"] == "L":
        img = img.convert("L")
    elif c["mode"] == "RGBA":
        alpha = rng.integers(0, 256, (h, w, 1)).astype(np.uint8)
        img = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    elif c["mode"] == "P":
        img = img.quantize(64)
    elif c["mode"] == "I16":
        # Half the values under 256 (kept), half over (Pillow clips them to 255).
        small = rng.integers(0, 256, (h, w))
        img = Image.fromarray(np.where(rng.random((h, w)) < 0.5, small, rng.integers(0, 65536, (h, w))).astype(np.uint16))
    folder = os.path.join("data", c["name"])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "img." + c["ext"])
    if c["ext"] == "jpg":
        img.save(path, quality=c["quality"], subsampling=c["subsampling"], progressive=c["progressive"])
    elif c["mode"] == "RGB16":
        png16(path, rng.integers(0, 65536, (h, w, 3)))
    elif c["ext"] == "webp":
        img.save(path, lossless=c.get("lossless", False))
    else:
        img.save(path)
    ref = Image.open(path).convert("RGB")
    if c.get("tensor"):
        mode = InterpolationMode[c["interpolation"].upper()]
        tensor = transforms.ToTensor()(ref)
        out = transforms.Resize(c["size"], interpolation=mode, antialias=True)(tensor)
        np.save(os.path.join("ref", c["name"] + ".npy"), out.numpy())
        continue
    if "size" in c:
        mode = InterpolationMode[c["interpolation"].upper()]
        ref = transforms.Resize(c["size"], interpolation=mode)(ref)
    if c.get("full"):
        tail = transforms.Compose([transforms.CenterCrop(c["crop"]), transforms.ToTensor(),
                                   transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        np.save(os.path.join("ref", c["name"] + ".npy"), tail(ref).numpy())
    else:
        np.save(os.path.join("ref", c["name"] + ".npy"), np.asarray(ref).transpose(2, 0, 1).copy())
"#;

/// One `dataset` stage per case, over its one-image folder: the case's resize (or none)
/// with `to_float = false`, so the output is the 8-bit image; a `full` case runs the
/// ImageNet-style list with its implicit `to_float`.
fn pipeline(cases: &[Value]) -> String {
    let mut text = String::from("[pipeline]\nname = \"p\"\n");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut steps = Vec::new();
        let backend = match case.get("tensor") {
            Some(_) => ", backend = \"tensor\"",
            None => "",
        };
        if let Some(size) = case.get("size") {
            steps.push(format!(
                "{{ resize = {{ size = {size}, interpolation = {}{backend} }} }}",
                case["interpolation"]
            ));
        }
        if case.get("tensor").is_some() {
            // The implicit to_float comes before a tensor resize.
        } else if case.get("full").is_some() {
            steps.push(format!("{{ center_crop = {} }}", case["crop"]));
            steps.push(
                "{ normalize = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] } }"
                    .into(),
            );
        } else {
            steps.push("{ to_float = false }".into());
        }
        text.push_str(&format!(
            "\n[stages.{name}]\nkind = \"dataset\"\nsource = \"data/{name}\"\ntransform = [{}]\n",
            steps.join(", ")
        ));
    }
    text
}

/// Generates the cases' images and references with the toolchain, builds every stage, and
/// returns, per case, pochi's sample and the reference.
fn run_cases(cases: &[Value]) -> Vec<(String, ArrayD<f32>, ArrayD<f32>)> {
    let project = Project::new(&pipeline(cases));
    project.write("generate.py", GENERATE);
    project.write("cases.json", &Value::Array(cases.to_vec()).to_string());
    project.python(&["generate.py", "cases.json"]);
    project.build(&[]).assert_ok();
    cases
        .iter()
        .map(|case| {
            let name = case["name"].as_str().unwrap().to_string();
            let read = |path: String| std::fs::File::open(project.path(&path)).unwrap();
            let ours = ArrayD::<f32>::read_npy(read(format!("build/p/{name}/{name}.npy"))).unwrap();
            let ours = ours.index_axis_move(ndarray::Axis(0), 0);
            let float = case.get("full").is_some() || case.get("tensor").is_some();
            let reference = match float {
                true => ArrayD::<f32>::read_npy(read(format!("ref/{name}.npy"))).unwrap(),
                false => ArrayD::<u8>::read_npy(read(format!("ref/{name}.npy")))
                    .unwrap()
                    .mapv(f32::from),
            };
            (name, ours, reference)
        })
        .collect()
}

/// Every case's output equals its reference exactly (same shape, every value).
fn assert_identical(results: &[(String, ArrayD<f32>, ArrayD<f32>)]) {
    for (name, ours, reference) in results {
        assert_eq!(ours.shape(), reference.shape(), "{name}: shapes differ");
        let differing = ours.iter().zip(reference).filter(|(a, b)| a != b).count();
        let largest = ours
            .iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(
            differing,
            0,
            "{name}: {differing} of {} values differ from the peer (largest difference {largest})",
            ours.len()
        );
    }
}

fn image(name: &str, w: u32, h: u32, mode: &str, ext: &str) -> Value {
    json!({ "name": name, "w": w, "h": h, "mode": mode, "ext": ext })
}

fn resized(mut case: Value, size: Value, interpolation: &str) -> Value {
    case["size"] = size;
    case["interpolation"] = json!(interpolation);
    case
}

#[test]
fn resize_is_bit_identical_to_torchvision_on_pil_images() {
    let cases = vec![
        // Odd sizes, both filters, every 8-bit mode pil_loader converts to RGB.
        resized(
            image("rgb_png", 37, 23, "RGB", "png"),
            json!(16),
            "bilinear",
        ),
        resized(
            image("rgb_bicubic", 37, 23, "RGB", "png"),
            json!(16),
            "bicubic",
        ),
        resized(image("grey_png", 29, 41, "L", "png"), json!(19), "bicubic"),
        resized(
            image("rgba_png", 51, 77, "RGBA", "png"),
            json!([30, 20]),
            "bicubic",
        ),
        resized(
            image("palette_png", 45, 31, "P", "png"),
            json!(17),
            "bilinear",
        ),
        resized(
            image("rgb_bmp", 33, 65, "RGB", "bmp"),
            json!(21),
            "bilinear",
        ),
        resized(image("grey_bmp", 35, 27, "L", "bmp"), json!(13), "bicubic"),
        // Upscales (one axis up, one down too).
        resized(
            image("up_bilinear", 13, 9, "RGB", "png"),
            json!(40),
            "bilinear",
        ),
        resized(
            image("up_bicubic", 7, 11, "RGB", "png"),
            json!([50, 5]),
            "bicubic",
        ),
        // 40x downscales.
        resized(
            image("down40_bilinear", 803, 641, "RGB", "png"),
            json!(16),
            "bilinear",
        ),
        resized(
            image("down40_bicubic", 641, 803, "RGB", "png"),
            json!(16),
            "bicubic",
        ),
        // The height shrinks by more than twice the width: Pillow 13 resizes vertically
        // first.
        resized(
            image("vertical_first", 80, 490, "RGB", "png"),
            json!([12, 70]),
            "bilinear",
        ),
        resized(
            image("vertical_first_bicubic", 81, 301, "RGB", "png"),
            json!([7, 60]),
            "bicubic",
        ),
        // An unchanged size is a copy in both.
        resized(
            image("same", 20, 10, "RGB", "png"),
            json!([10, 20]),
            "bicubic",
        ),
    ];
    assert_identical(&run_cases(&cases));
}

#[test]
fn resize_matches_torchvision_on_a_seeded_sweep_of_sizes() {
    // A fixed linear congruential sequence: sizes from 1 to 300, targets from 1 to 2x.
    let mut state: u64 = 0x5eed;
    let mut next = |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let modes = [
        ("RGB", "png"),
        ("L", "png"),
        ("RGBA", "png"),
        ("P", "png"),
        ("RGB", "bmp"),
    ];
    let cases: Vec<Value> = (0..40)
        .map(|i| {
            let (w, h) = (1 + next(300) as u32, 1 + next(300) as u32);
            let (mode, ext) = modes[i % modes.len()];
            let size = if i % 2 == 0 {
                json!(1 + next(2 * u64::from(w.min(h))))
            } else {
                json!([1 + next(2 * u64::from(h)), 1 + next(2 * u64::from(w))])
            };
            let filter = if i % 3 == 0 { "bicubic" } else { "bilinear" };
            resized(image(&format!("sweep{i}"), w, h, mode, ext), size, filter)
        })
        .collect();
    assert_identical(&run_cases(&cases));
}

#[test]
fn the_default_image_transform_equals_torchvisions_val_transform() {
    // Resize(int) + CenterCrop on the PIL image, then ToTensor and Normalize: float32
    // values equal to the bit, with pochi's implicit to_float.
    let mut case = resized(image("val", 97, 61, "RGB", "png"), json!(36), "bilinear");
    case["full"] = json!(true);
    case["crop"] = json!(32);
    assert_identical(&run_cases(&[case]));
}

#[test]
fn the_tensor_backend_matches_torchvision_on_float_tensors() {
    // backend = "tensor" (the float resize pochi had before): ToTensor, then Resize with
    // antialias=True on the float tensor. pochi sums in f64, torch in f32: equal to 1e-5.
    let tensor = |case: Value| {
        let mut case = case;
        case["tensor"] = json!(true);
        case
    };
    let cases = vec![
        tensor(resized(
            image("t_down", 97, 61, "RGB", "png"),
            json!(20),
            "bilinear",
        )),
        tensor(resized(
            image("t_up", 13, 9, "RGB", "png"),
            json!([30, 41]),
            "bilinear",
        )),
        tensor(resized(
            image("t_bicubic", 120, 90, "RGB", "png"),
            json!(33),
            "bicubic",
        )),
    ];
    for (name, ours, reference) in run_cases(&cases) {
        assert_eq!(ours.shape(), reference.shape(), "{name}");
        let largest = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            largest < 1e-5,
            "{name}: differs from torchvision by {largest}"
        );
    }
}

#[test]
fn jpeg_decodes_as_pillow_does() {
    let jpeg = |name: &str, w: u32, h: u32, mode: &str, subsampling: u32, progressive: bool| {
        let mut case = image(name, w, h, mode, "jpg");
        case["quality"] = json!(if progressive { 75 } else { 90 });
        case["subsampling"] = json!(subsampling);
        case["progressive"] = json!(progressive);
        case
    };
    let cases = vec![
        // Pillow's subsampling: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0; odd sizes cut MCUs.
        jpeg("c420_odd", 37, 23, "RGB", 2, false),
        jpeg("c420", 64, 48, "RGB", 2, false),
        jpeg("c444", 123, 77, "RGB", 0, false),
        jpeg("c422", 51, 33, "RGB", 1, false),
        jpeg("c420_progressive", 99, 61, "RGB", 2, true),
        jpeg("grey", 45, 29, "L", 0, false),
        jpeg("grey_large", 160, 120, "L", 0, true),
    ];
    // And a seeded sweep: sizes 1..400, each subsampling, grey every fourth.
    let mut state: u64 = 0x1dc7;
    let mut next = |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let sweep = (0..16).map(|i| {
        let (w, h) = (1 + next(400) as u32, 1 + next(400) as u32);
        let mode = if i % 4 == 3 { "L" } else { "RGB" };
        let mut case = jpeg(&format!("sweep{i}"), w, h, mode, (i % 3) as u32, i % 5 == 0);
        case["quality"] = json!(40 + next(61));
        case
    });
    let cases: Vec<Value> = cases.into_iter().chain(sweep).collect();
    assert_identical(&run_cases(&cases));
}

/// Issue 22 (11): every format torchvision's `ImageFolder` reads is read, as Pillow decodes
/// it (`.webp`, `.tif`, `.ppm` were skipped without a word), and a 16-bit PNG becomes what
/// Pillow's `convert("RGB")` makes of it (it clips 16-bit grey to 255 and keeps the high
/// byte of 16-bit colour; pochi scaled by 1/257).
#[test]
fn every_format_image_folder_reads_decodes_as_pillow_does() {
    let mut lossless = image("webp_lossless", 41, 27, "RGB", "webp");
    lossless["lossless"] = json!(true);
    let cases = vec![
        image("tif_rgb", 37, 23, "RGB", "tif"),
        image("tiff_grey", 20, 31, "L", "tiff"),
        image("tif_rgba", 33, 17, "RGBA", "tif"),
        image("ppm", 29, 19, "RGB", "ppm"),
        image("pgm", 29, 19, "L", "pgm"),
        image("webp_lossy", 64, 48, "RGB", "webp"),
        lossless,
        image("png_grey16", 23, 29, "I16", "png"),
        image("png_rgb16", 31, 21, "RGB16", "png"),
    ];
    assert_identical(&run_cases(&cases));
}
