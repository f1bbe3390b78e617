//! The `dataset` stage kind, driven through the built binary in temporary projects.

use std::path::PathBuf;
use std::process::Output;

use ndarray::{Array1, ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, write_npy};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A project of one `dataset` stage, `calib`, on the shared harness.
struct Project {
    inner: crate::common::Project,
}

impl Project {
    fn new(stage: &str) -> Project {
        let inner = crate::common::Project::new(&format!(
            "[pipeline]\nname = \"p\"\n\n[stages.calib]\nkind = \"dataset\"\n{stage}\n"
        ));
        Project { inner }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.inner.path(relative)
    }

    fn image(&self, relative: &str, width: u32, height: u32, rgb: [u8; 3]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
            .save(&path)
            .unwrap();
    }

    fn build(&self) -> Output {
        self.inner.command(&["build", "--json"]).output().unwrap()
    }

    /// Builds, expecting success; returns the status of the stage ("ran" / "skipped").
    fn build_ok(&self) -> String {
        let output = self.build();
        assert!(
            output.status.success(),
            "build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        summary["stages"][0]["status"].as_str().unwrap().to_string()
    }

    /// Builds, expecting failure; returns stderr.
    fn build_fails(&self) -> String {
        let output = self.build();
        assert!(!output.status.success(), "build succeeded unexpectedly");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn data(&self) -> ArrayD<f32> {
        ArrayD::<f32>::read_npy(std::fs::File::open(self.path("build/p/calib/calib.npy")).unwrap())
            .unwrap()
    }

    fn labels(&self) -> Vec<i64> {
        Array1::<i64>::read_npy(
            std::fs::File::open(self.path("build/p/calib/calib_labels.npy")).unwrap(),
        )
        .unwrap()
        .to_vec()
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(self.path("build/p/calib/calib_manifest.json")).unwrap(),
        )
        .unwrap()
    }

    fn bytes(&self, relative: &str) -> Vec<u8> {
        std::fs::read(self.path(relative)).unwrap()
    }

    fn published(&self) -> bool {
        self.path("build/p/calib/calib.npy").exists()
    }
}

const IMAGENET: &str = "transform = [{ resize = 4 }, { center_crop = 4 }, { normalize = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] } }]";

fn class_images(project: &Project) {
    project.image("data/val/cat/a.png", 8, 6, [200, 100, 50]);
    project.image("data/val/cat/b.bmp", 6, 8, [200, 100, 50]);
    project.image("data/val/dog/c.png", 10, 10, [10, 20, 30]);
}

#[test]
fn images_become_normalized_tensors_with_class_labels() {
    let project = Project::new(&format!("source = \"data/val\"\n{IMAGENET}"));
    class_images(&project);
    assert_eq!(project.build_ok(), "ran");
    let data = project.data();
    assert_eq!(data.shape(), &[3, 3, 4, 4]);
    assert_eq!(project.labels(), vec![0, 0, 1]);
    for (sample, rgb) in [
        (0, [200u8, 100, 50]),
        (1, [200, 100, 50]),
        (2, [10, 20, 30]),
    ] {
        for channel in 0..3 {
            // A solid colour stays exact through resize and crop: (c / 255 - mean) / std.
            let expected = (f32::from(rgb[channel]) / 255.0 - MEAN[channel]) / STD[channel];
            for y in 0..4 {
                for x in 0..4 {
                    assert_eq!(
                        data[IxDyn(&[sample, channel, y, x])],
                        expected,
                        "sample {sample} channel {channel}"
                    );
                }
            }
        }
    }
    let manifest = project.manifest();
    assert_eq!(manifest["count"], 3);
    assert_eq!(manifest["shape"], serde_json::json!([3, 3, 4, 4]));
    assert_eq!(manifest["classes"], serde_json::json!(["cat", "dog"]));
    assert_eq!(
        manifest["class_counts"],
        serde_json::json!({ "cat": 2, "dog": 1 })
    );
    assert_eq!(
        manifest["files"],
        serde_json::json!(["cat/a.png", "cat/b.bmp", "dog/c.png"])
    );
    assert_eq!(
        manifest["source"]["files_digest"].as_str().unwrap().len(),
        64
    );
    // Resize and crop on the 8-bit image (Pillow's arithmetic), then ToTensor.
    assert_eq!(
        manifest["transform"][0],
        serde_json::json!({ "resize": { "size": 4, "interpolation": "bilinear", "backend": "pil" } })
    );
    assert_eq!(
        manifest["transform"][2],
        serde_json::json!({ "to_float": true })
    );
}

#[test]
fn an_unchanged_rerun_is_skipped_and_an_added_image_reruns() {
    let project = Project::new(&format!("source = \"data/val\"\n{IMAGENET}"));
    class_images(&project);
    assert_eq!(project.build_ok(), "ran");
    assert_eq!(project.build_ok(), "skipped");
    project.image("data/val/dog/d.jpg", 5, 5, [0, 0, 0]);
    assert_eq!(project.build_ok(), "ran");
    assert_eq!(project.labels(), vec![0, 0, 1, 1]);
    assert_eq!(project.manifest()["files"][3], "dog/d.jpg");
}

#[test]
fn a_seeded_subset_is_deterministic_across_projects() {
    let stage = format!("source = \"data/val\"\nsamples = 4\nseed = 7\nshuffle = true\n{IMAGENET}");
    // The second project decodes on one thread: the output must not depend on it.
    let make = |extra: &str| {
        let project = Project::new(&format!("{stage}\n{extra}"));
        for i in 0..10u8 {
            let class = if i % 2 == 0 { "even" } else { "odd" };
            project.image(
                &format!("data/val/{class}/{i}.png"),
                6 + u32::from(i),
                7,
                [i * 20, 255 - i * 20, i],
            );
        }
        assert_eq!(project.build_ok(), "ran");
        project
    };
    let (first, second) = (make(""), make("resources = { cpu = 1 }"));
    assert_eq!(first.data().shape(), &[4, 3, 4, 4]);
    assert_eq!(first.labels().len(), 4);
    for file in [
        "build/p/calib/calib.npy",
        "build/p/calib/calib_labels.npy",
        "build/p/calib/calib_manifest.json",
    ] {
        assert_eq!(first.bytes(file), second.bytes(file), "{file} differs");
    }
    let files = first.manifest()["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 4);
    let mut unique = files.clone();
    unique.sort_by_key(|f| f.to_string());
    unique.dedup();
    assert_eq!(unique.len(), 4);
}

#[test]
fn npy_volumes_are_cropped_or_padded() {
    let project = Project::new(
        "source = \"vols\"\ntransform = [{ add_channel = true }, { crop_or_pad = [4, 4, 4] }, { scale_intensity = { min = 0.0, max = 1.0 } }]",
    );
    std::fs::create_dir_all(project.path("vols")).unwrap();
    // A small volume gets zero padding around it; a large one is centre-cropped.
    let small = ArrayD::<f64>::from_elem(IxDyn(&[2, 2, 2]), 5.0);
    write_npy(project.path("vols/a.npy"), &small).unwrap();
    let large =
        ArrayD::<i16>::from_shape_fn(IxDyn(&[6, 6, 6]), |i| (i[0] * 36 + i[1] * 6 + i[2]) as i16);
    write_npy(project.path("vols/b.npy"), &large).unwrap();
    assert_eq!(project.build_ok(), "ran");
    let data = project.data();
    assert_eq!(data.shape(), &[2, 1, 4, 4, 4]);
    assert_eq!(project.labels(), vec![-1, -1]);
    // a: zeros around a cube of 5.0 at [1..3), scaled to 0..1.
    assert_eq!(data[IxDyn(&[0, 0, 0, 0, 0])], 0.0);
    assert_eq!(data[IxDyn(&[0, 0, 1, 1, 1])], 1.0);
    assert_eq!(data[IxDyn(&[0, 0, 2, 2, 2])], 1.0);
    assert_eq!(data[IxDyn(&[0, 0, 3, 3, 3])], 0.0);
    // b: voxels [1..5) of each axis, min-max scaled.
    assert_eq!(data[IxDyn(&[1, 0, 0, 0, 0])], 0.0);
    assert_eq!(data[IxDyn(&[1, 0, 3, 3, 3])], 1.0);
    assert_eq!(project.manifest()["source"]["kind"], "npy_files");
}

#[test]
fn volumes_without_a_channel_axis_are_a_clear_error() {
    let project = Project::new("source = \"vols\"");
    std::fs::create_dir_all(project.path("vols")).unwrap();
    write_npy(
        project.path("vols/a.npy"),
        &ArrayD::<f32>::zeros(IxDyn(&[4, 4])),
    )
    .unwrap();
    let stderr = project.build_fails();
    assert!(
        stderr.contains("`a.npy`") && stderr.contains("add_channel"),
        "{stderr}"
    );
    assert!(!project.published());
}

#[test]
fn synthetic_data_has_its_shape_and_is_reproducible() {
    let stage = "synthetic = { shape = [1, 4, 4, 4], count = 3, seed = 1 }";
    let (first, second) = (Project::new(stage), Project::new(stage));
    assert_eq!(first.build_ok(), "ran");
    assert_eq!(second.build_ok(), "ran");
    assert_eq!(first.data().shape(), &[3, 1, 4, 4, 4]);
    assert_eq!(first.labels(), vec![-1, -1, -1]);
    assert_eq!(
        first.bytes("build/p/calib/calib.npy"),
        second.bytes("build/p/calib/calib.npy")
    );
    let other = Project::new("synthetic = { shape = [1, 4, 4, 4], count = 3, seed = 2 }");
    assert_eq!(other.build_ok(), "ran");
    assert_ne!(first.data(), other.data());
    let uniform =
        Project::new("synthetic = { shape = [3, 2, 2], count = 2, distribution = \"uniform\" }");
    assert_eq!(uniform.build_ok(), "ran");
    assert!(uniform.data().iter().all(|v| (0.0..1.0).contains(v)));
}

#[test]
fn spec_errors_name_the_key_and_publish_nothing() {
    let unknown = Project::new("source = \"data\"\ntransform = [{ resise = 4 }]");
    class_images(&unknown);
    let stderr = unknown.build_fails();
    assert!(
        stderr.contains("unknown transform `resise`") && stderr.contains("resize"),
        "{stderr}"
    );
    assert!(!unknown.published());

    let both = Project::new("source = \"data\"\nsynthetic = { shape = [1], count = 1 }");
    let stderr = both.build_fails();
    assert!(
        stderr.contains("synthetic") && stderr.contains("source") && stderr.contains("not both"),
        "{stderr}"
    );
    assert!(!both.published());
}

#[test]
fn source_errors_name_the_folder_or_file_and_publish_nothing() {
    let empty = Project::new("source = \"data/val\"");
    std::fs::create_dir_all(empty.path("data/val/cat")).unwrap();
    let stderr = empty.build_fails();
    assert!(
        stderr.contains("data/val") && stderr.contains("has no images"),
        "{stderr}"
    );
    assert!(!empty.published());

    let mixed = Project::new("source = \"data/val\"");
    class_images(&mixed);
    let stderr = mixed.build_fails();
    assert!(
        stderr.contains("differ in shape") && stderr.contains("cat/"),
        "{stderr}"
    );
    assert!(!mixed.published());

    let broken = Project::new("source = \"data/val\"\ntransform = [{ resize = [4, 4] }]");
    class_images(&broken);
    std::fs::write(broken.path("data/val/dog/broken.jpg"), b"not an image").unwrap();
    let stderr = broken.build_fails();
    assert!(stderr.contains("dog/broken.jpg"), "{stderr}");
    assert!(!broken.published());
}

#[test]
fn a_dataset_can_read_another_stages_array() {
    let project = Project::new(
        "synthetic = { shape = [3, 4, 4], count = 5 }\n\n[stages.subset]\nkind = \"dataset\"\nsource = \"@calib\"\nsamples = 2\ntransform = [{ channel_order = \"bgr\" }]",
    );
    let output = project.build();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let subset = ArrayD::<f32>::read_npy(
        std::fs::File::open(project.path("build/p/subset/subset.npy")).unwrap(),
    )
    .unwrap();
    assert_eq!(subset.shape(), &[2, 3, 4, 4]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(project.path("build/p/subset/subset_manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["source"]["kind"], "npy_array");
    // Each subset sample is a channel-reversed sample of the full array.
    let full = project.data();
    let index: usize = manifest["files"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("calib.npy[")
        .trim_end_matches(']')
        .parse()
        .unwrap();
    assert_eq!(subset[IxDyn(&[0, 0, 1, 2])], full[IxDyn(&[index, 2, 1, 2])]);
}
