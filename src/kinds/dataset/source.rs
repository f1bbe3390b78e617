//! Where samples come from: a folder of images or `.npy` volumes (class-per-folder or flat),
//! one `.npy` file whose first axis is the samples (another dataset stage's output), or
//! seeded synthetic tensors. Listing is sorted, so the order never depends on the disk.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis};
use ndarray_npy::{ReadNpyError, ReadNpyExt};

use super::random;

/// Why a source cannot be listed or a sample of it read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum SourceError {
    #[error("cannot read source `{shown}`")]
    CannotReadSource {
        shown: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "source `{shown}` is a file but not a .npy array; give a folder of images or .npy files, or a .npy file"
    )]
    FileNotNpy { shown: String },
    /// A file of the source (or the source's `.npy` itself) does not decode.
    #[error("cannot read `{name}`")]
    Unreadable {
        name: String,
        #[source]
        source: FileError,
    },
    #[error(
        "`{shown}` has shape {shape:?}; a .npy source needs the samples on its first axis (N x ...), N >= 1"
    )]
    NotSamples { shown: String, shape: Vec<usize> },
    #[error("cannot list `{shown}`")]
    CannotList {
        shown: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "source `{shown}` has class folders but also `{stray}` directly inside it; move it into a class folder or remove it"
    )]
    StrayFile { shown: String, stray: String },
    #[error(
        "source `{shown}` has no images ({}) or .npy files",
        image_extensions()
    )]
    NoFiles { shown: String },
    #[error(
        "source `{shown}` mixes images and .npy files (`{first}` and `{other}`); keep one kind per source"
    )]
    MixedKinds {
        shown: String,
        first: String,
        other: String,
    },
    #[error(transparent)]
    SyntheticShape(#[from] ndarray::ShapeError),
}

/// Why one file does not decode. The decoders' own errors are shown in the message (their
/// text already holds their causes).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum FileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Image(image::ImageError),
    #[error("not a valid JPEG: {0}")]
    Jpeg(turbojpeg::Error),
    #[error("not a valid .npy file: {0}")]
    Npy(ReadNpyError),
    #[error("unsupported dtype {0}; use a real number type (float32, float64, int, uint or bool)")]
    UnsupportedDtype(String),
}

/// The image extensions as a message lists them: `.jpg, .jpeg, ...`.
fn image_extensions() -> String {
    IMAGE_EXTENSIONS
        .iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// torchvision's `ImageFolder` extensions (`IMG_EXTENSIONS`): every file it reads is read.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];
/// Folders deeper than this inside a class folder are not searched (a guard against loops).
const MAX_DEPTH: usize = 32;

/// What a source yields, before selection.
#[derive(Debug)]
pub(super) enum Listing {
    /// Files under a folder: images or `.npy` volumes.
    Files {
        root: PathBuf,
        kind: FileKind,
        classes: Vec<String>,
        files: Vec<SourceFile>,
    },
    /// One `.npy` array, one sample per entry of its first axis.
    Array { path: PathBuf, array: ArrayD<f32> },
    /// `count` random tensors of `shape`.
    Synthetic(SyntheticSpec),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Images,
    Volumes,
}

/// One file of a folder source.
#[derive(Debug, Clone)]
pub(super) struct SourceFile {
    /// Relative to the source folder, with `/` separators.
    pub relative: String,
    /// The class index, or -1 when the folder has no class folders.
    pub label: i64,
}

/// `synthetic = { shape = [...], count = N, seed = S, distribution = "normal" }`
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(super) struct SyntheticSpec {
    pub shape: Vec<usize>,
    pub count: usize,
    pub seed: u64,
    pub distribution: Distribution,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub(super) enum Distribution {
    /// Standard normal (mean 0, std 1).
    Normal,
    /// Uniform in [0, 1).
    Uniform,
}

impl Listing {
    /// Lists a folder or reads a `.npy` file at `root` (absolute); `shown` names it in errors.
    pub(super) fn open(root: &Path, shown: &str) -> Result<Listing, SourceError> {
        let metadata = std::fs::metadata(root).map_err(|source| SourceError::CannotReadSource {
            shown: shown.to_string(),
            source,
        })?;
        if metadata.is_file() {
            if extension(root).as_deref() != Some("npy") {
                return Err(SourceError::FileNotNpy {
                    shown: shown.to_string(),
                });
            }
            let array = read_npy(root).map_err(|source| SourceError::Unreadable {
                name: shown.to_string(),
                source,
            })?;
            if array.ndim() < 2 || array.shape()[0] == 0 {
                return Err(SourceError::NotSamples {
                    shown: shown.to_string(),
                    shape: array.shape().to_vec(),
                });
            }
            return Ok(Listing::Array {
                path: root.to_path_buf(),
                array,
            });
        }
        list_folder(root, shown)
    }

    /// How many samples the source has.
    pub(super) fn len(&self) -> usize {
        match self {
            Listing::Files { files, .. } => files.len(),
            Listing::Array { array, .. } => array.shape()[0],
            Listing::Synthetic(spec) => spec.count,
        }
    }

    /// Sample `index`, decoded to float32 (images: 3 x H x W RGB with values 0..255).
    pub(super) fn load(&self, index: usize) -> Result<ArrayD<f32>, SourceError> {
        match self {
            Listing::Files {
                root, kind, files, ..
            } => {
                let file = &files[index];
                let path = root.join(&file.relative);
                match kind {
                    FileKind::Images => decode_image(&path),
                    FileKind::Volumes => read_npy(&path),
                }
                .map_err(|source| SourceError::Unreadable {
                    name: file.relative.clone(),
                    source,
                })
            }
            Listing::Array { array, .. } => Ok(array.index_axis(Axis(0), index).to_owned()),
            Listing::Synthetic(spec) => {
                let len = spec.shape.iter().product();
                let values = random::values(
                    len,
                    spec.distribution == Distribution::Normal,
                    spec.seed,
                    index as u64,
                );
                Ok(ArrayD::from_shape_vec(spec.shape.clone(), values)?)
            }
        }
    }

    /// How sample `index` is named in errors and in the manifest.
    pub(super) fn name(&self, index: usize) -> String {
        match self {
            Listing::Files { files, .. } => files[index].relative.clone(),
            Listing::Array { path, .. } => {
                format!(
                    "{}[{index}]",
                    path.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                )
            }
            Listing::Synthetic(_) => format!("synthetic[{index}]"),
        }
    }

    pub(super) fn label(&self, index: usize) -> i64 {
        match self {
            Listing::Files { files, .. } => files[index].label,
            _ => -1,
        }
    }

    pub(super) fn classes(&self) -> &[String] {
        match self {
            Listing::Files { classes, .. } => classes,
            _ => &[],
        }
    }

    pub(super) fn is_images(&self) -> bool {
        matches!(
            self,
            Listing::Files {
                kind: FileKind::Images,
                ..
            }
        )
    }

    pub(super) fn kind_name(&self) -> &'static str {
        match self {
            Listing::Files {
                kind: FileKind::Images,
                ..
            } => "images",
            Listing::Files {
                kind: FileKind::Volumes,
                ..
            } => "npy_files",
            Listing::Array { .. } => "npy_array",
            Listing::Synthetic(_) => "synthetic",
        }
    }

    /// blake3 over the sorted relative paths of every file the source offers (one per line).
    pub(super) fn files_digest(&self) -> Option<String> {
        let Listing::Files { files, .. } = self else {
            return None;
        };
        let mut hasher = blake3::Hasher::new();
        for file in files {
            hasher.update(file.relative.as_bytes());
            hasher.update(b"\n");
        }
        Some(hasher.finalize().to_hex().to_string())
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

fn kind_of(path: &Path) -> Option<FileKind> {
    let extension = extension(path)?;
    if IMAGE_EXTENSIONS.contains(&extension.as_str()) {
        Some(FileKind::Images)
    } else if extension == "npy" {
        Some(FileKind::Volumes)
    } else {
        None
    }
}

/// Entries of `dir` that are not hidden, sorted by name: (name, path, is_dir).
fn entries(dir: &Path, shown: &str) -> Result<Vec<(String, PathBuf, bool)>, SourceError> {
    let cannot_list = |source| SourceError::CannotList {
        shown: shown.to_string(),
        source,
    };
    let read = std::fs::read_dir(dir).map_err(cannot_list)?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(cannot_list)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links, as the fingerprint does.
        let is_dir = std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Files with a known extension under `dir`, recursively, as (relative path, kind).
fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, FileKind)>,
) -> Result<(), SourceError> {
    for (name, path, is_dir) in entries(dir, prefix)? {
        let relative = format!("{prefix}/{name}");
        if is_dir {
            if depth < MAX_DEPTH {
                walk(&path, &relative, depth + 1, out)?;
            }
        } else if let Some(kind) = kind_of(&path) {
            out.push((relative, kind));
        }
    }
    Ok(())
}

fn list_folder(root: &Path, shown: &str) -> Result<Listing, SourceError> {
    let top = entries(root, shown)?;
    let mut top_files: Vec<(String, FileKind)> = Vec::new();
    let mut classes = Vec::new();
    let mut class_files: Vec<(String, FileKind, i64)> = Vec::new();
    for (name, path, is_dir) in &top {
        if *is_dir {
            let mut found = Vec::new();
            walk(path, name, 1, &mut found)?;
            let label = classes.len() as i64;
            classes.push(name.clone());
            class_files.extend(
                found
                    .into_iter()
                    .map(|(relative, kind)| (relative, kind, label)),
            );
        } else if let Some(kind) = kind_of(path) {
            top_files.push((name.clone(), kind));
        }
    }
    let files: Vec<(String, FileKind, i64)> = if class_files.is_empty() {
        classes.clear();
        top_files
            .into_iter()
            .map(|(relative, kind)| (relative, kind, -1))
            .collect()
    } else {
        if let Some((stray, _)) = top_files.first() {
            return Err(SourceError::StrayFile {
                shown: shown.to_string(),
                stray: stray.clone(),
            });
        }
        class_files
    };
    let Some(first) = files.first() else {
        return Err(SourceError::NoFiles {
            shown: shown.to_string(),
        });
    };
    let kind = first.1;
    if let Some(other) = files.iter().find(|file| file.1 != kind) {
        return Err(SourceError::MixedKinds {
            shown: shown.to_string(),
            first: first.0.clone(),
            other: other.0.clone(),
        });
    }
    let mut files: Vec<SourceFile> = files
        .into_iter()
        .map(|(relative, _, label)| SourceFile { relative, label })
        .collect();
    // Class folders are in name order already; sort the whole list by path for good measure.
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(Listing::Files {
        root: root.to_path_buf(),
        kind,
        classes,
        files,
    })
}

/// Decodes an image (any supported format, whatever its extension says) to RGB, as
/// 3 x H x W float32 with values 0..255.
fn decode_image(path: &Path) -> Result<ArrayD<f32>, FileError> {
    let reader = image::ImageReader::open(path)?.with_guessed_format()?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        let bytes = std::fs::read(path)?;
        if let Some(decoded) = decode_jpeg(&bytes)? {
            return Ok(planar(&decoded.pixels, decoded.width, decoded.height));
        }
    }
    let image = pillow_rgb8(reader.decode().map_err(FileError::Image)?);
    let (width, height) = (image.width() as usize, image.height() as usize);
    Ok(planar(image.as_raw(), width, height))
}

/// An image as Pillow's `convert("RGB")` makes it. 8-bit images convert as the `image`
/// crate does. 16-bit ones do not scale: Pillow reads 16-bit grey as `I;16` and clips it
/// to 255, and keeps the high byte of 16-bit colour (and grey with alpha) samples.
fn pillow_rgb8(image: image::DynamicImage) -> image::RgbImage {
    use image::DynamicImage::{ImageLuma16, ImageLumaA16, ImageRgb16, ImageRgba16};
    let (width, height) = (image.width(), image.height());
    if !matches!(
        image,
        ImageLuma16(_) | ImageLumaA16(_) | ImageRgb16(_) | ImageRgba16(_)
    ) {
        return image.into_rgb8();
    }
    let rgb = |samples: Vec<u8>| {
        image::RgbImage::from_raw(width, height, samples).unwrap_or_else(|| image.to_rgb8())
    };
    match &image {
        ImageLuma16(grey) => rgb(grey
            .as_raw()
            .iter()
            .flat_map(|&v| [v.min(255) as u8; 3])
            .collect()),
        ImageLumaA16(grey) => rgb(grey
            .as_raw()
            .chunks_exact(2)
            .flat_map(|la| [(la[0] >> 8) as u8; 3])
            .collect()),
        ImageRgb16(colour) => rgb(colour.as_raw().iter().map(|&v| (v >> 8) as u8).collect()),
        ImageRgba16(colour) => rgb(colour
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect()),
        _ => image.to_rgb8(),
    }
}

/// A JPEG decoded by libjpeg-turbo (what Pillow uses) to RGB with its default settings
/// (accurate integer IDCT, smooth chroma upsampling), as Pillow's
/// `Image.open(f).convert("RGB")` decodes it; grey JPEGs come out with R = G = B. `None`
/// for CMYK/YCCK files, which Pillow converts with its own formula: those go through the
/// `image` crate.
fn decode_jpeg(bytes: &[u8]) -> Result<Option<turbojpeg::Image<Vec<u8>>>, FileError> {
    let header = turbojpeg::read_header(bytes).map_err(FileError::Jpeg)?;
    if matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    ) {
        return Ok(None);
    }
    turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGB)
        .map(Some)
        .map_err(FileError::Jpeg)
}

/// Interleaved RGB bytes (rows of `width * 3`) as a float32 `3 x height x width` array.
fn planar(pixels: &[u8], width: usize, height: usize) -> ArrayD<f32> {
    let plane = height * width;
    let mut data = vec![0f32; 3 * plane];
    for (i, rgb) in pixels.chunks_exact(3).take(plane).enumerate() {
        data[i] = f32::from(rgb[0]);
        data[plane + i] = f32::from(rgb[1]);
        data[2 * plane + i] = f32::from(rgb[2]);
    }
    ArrayD::from_shape_vec(vec![3, height, width], data)
        .unwrap_or_else(|_| ArrayD::zeros(vec![3, height, width]))
}

/// Reads a `.npy` array of any real numeric dtype as float32.
fn read_npy(path: &Path) -> Result<ArrayD<f32>, FileError> {
    let bytes = std::fs::read(path)?;
    macro_rules! try_types {
        ($($t:ty),*) => {
            $(
                match ArrayD::<$t>::read_npy(bytes.as_slice()) {
                    Ok(array) => return Ok(array.mapv(|v| v as f32)),
                    Err(ReadNpyError::WrongDescriptor(_)) => {}
                    Err(error) => return Err(FileError::Npy(error)),
                }
            )*
        };
    }
    try_types!(f32, f64, u8, i8, u16, i16, u32, i32, u64, i64);
    match ArrayD::<bool>::read_npy(bytes.as_slice()) {
        Ok(array) => Ok(array.mapv(|v| if v { 1.0 } else { 0.0 })),
        Err(ReadNpyError::WrongDescriptor(descr)) => {
            Err(FileError::UnsupportedDtype(descr.to_string()))
        }
        Err(error) => Err(FileError::Npy(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn class_folders_give_sorted_labels() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "dog/b.png",
            "dog/a.JPG",
            "cat/x/deep.bmp",
            "cat/1.jpeg",
            "cat/notes.txt",
            ".hidden/z.png",
            "empty/.keep",
        ] {
            touch(&dir.path().join(file));
        }
        let listing = list_folder(dir.path(), "src").unwrap();
        assert_eq!(listing.classes(), &["cat", "dog", "empty"]);
        let names: Vec<(String, i64)> = (0..listing.len())
            .map(|i| (listing.name(i), listing.label(i)))
            .collect();
        assert_eq!(
            names,
            vec![
                ("cat/1.jpeg".into(), 0),
                ("cat/x/deep.bmp".into(), 0),
                ("dog/a.JPG".into(), 1),
                ("dog/b.png".into(), 1)
            ]
        );
        assert!(listing.is_images());
    }

    #[test]
    fn flat_folders_are_unlabelled_and_bad_folders_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("b.npy"));
        touch(&dir.path().join("a.npy"));
        let listing = list_folder(dir.path(), "vol").unwrap();
        assert_eq!(listing.label(0), -1);
        assert_eq!(listing.name(0), "a.npy");
        assert_eq!(listing.kind_name(), "npy_files");

        touch(&dir.path().join("c.png"));
        assert!(
            list_folder(dir.path(), "vol")
                .unwrap_err()
                .to_string()
                .contains("mixes")
        );

        let empty = tempfile::tempdir().unwrap();
        touch(&empty.path().join("readme.txt"));
        assert!(
            list_folder(empty.path(), "e")
                .unwrap_err()
                .to_string()
                .contains("has no images")
        );

        let stray = tempfile::tempdir().unwrap();
        touch(&stray.path().join("cat/a.png"));
        touch(&stray.path().join("b.png"));
        assert!(
            list_folder(stray.path(), "s")
                .unwrap_err()
                .to_string()
                .contains("`b.png`")
        );
    }

    #[test]
    fn unreadable_images_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
        let listing = list_folder(dir.path(), "src").unwrap();
        assert!(
            listing
                .load(0)
                .unwrap_err()
                .to_string()
                .contains("`broken.png`")
        );
    }
}
