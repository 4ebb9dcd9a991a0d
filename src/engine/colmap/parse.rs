//! Reading COLMAP's printed lines (untrusted text: never panics, ignores what it does not know).

use crate::jobs::Summary;

/// `Processed file [3/13]` → 3/13 of the extraction.
pub fn extraction(line: &str) -> Option<f32> {
    bracketed(line.split("Processed file").nth(1)?)
}

/// `Matching block [1/2, 1/2]` → the share of blocks matched.
pub fn matching(line: &str) -> Option<f32> {
    let rest = line.split("Matching block").nth(1)?;
    let inner = rest.trim().strip_prefix('[')?.split(']').next()?;
    let (a, b) = inner.split_once(',')?;
    let (i, n) = fraction(a)?;
    let (j, m) = fraction(b)?;
    Some(((i - 1) as f32 * m as f32 + j as f32) / (n as f32 * m as f32))
}

/// `Registering image #10 (5)` → 5 of `images` registered so far.
pub fn registering(line: &str, images: u32) -> Option<f32> {
    let rest = line.split("Registering image #").nth(1)?;
    let count: u32 = rest.split('(').nth(1)?.split(')').next()?.trim().parse().ok()?;
    (images > 0).then(|| (count as f32 / images as f32).min(1.0))
}

/// `model_analyzer` output → the summary (`mesh` is filled in later).
pub fn summary(lines: &[String], images: u32) -> Summary {
    let value = |key: &str| {
        lines.iter().find_map(|l| {
            l.split(key)
                .nth(1)
                .map(|v| v.trim().trim_end_matches("px").trim().to_string())
        })
    };
    Summary {
        images,
        registered_images: value("Registered images:").and_then(|v| v.parse().ok()).unwrap_or(0),
        points: value("Points:").and_then(|v| v.parse().ok()).unwrap_or(0),
        mean_reprojection_error_px: value("Mean reprojection error:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        mesh: false,
    }
}

/// A registered image's camera, as the console's viewer draws it (`cameras.json`).
#[derive(Debug, PartialEq, serde::Serialize)]
pub struct Camera {
    /// The photo's file name.
    pub name: String,
    /// Where the camera was, in model coordinates.
    pub center: [f64; 3],
    /// Its rotation from world to camera, as a unit quaternion `[w, x, y, z]` (COLMAP's).
    pub rotation: [f64; 4],
}

/// The cameras of a COLMAP text model's `images.txt`: after `#` comments, two lines per image,
/// `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` and its 2D points (an empty line when none).
/// The centre is `-Rᵀt`. Lines that do not read as an image are skipped.
pub fn cameras(images_txt: &str) -> Vec<Camera> {
    let lines = images_txt.lines().filter(|l| !l.starts_with('#'));
    lines.step_by(2).filter_map(camera).collect()
}

fn camera(line: &str) -> Option<Camera> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, qw, qx, qy, qz, tx, ty, tz, _, name] = fields.get(..10)?.try_into().ok()?;
    let n = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    let (w, x, y, z) = (n(qw)?, n(qx)?, n(qy)?, n(qz)?);
    let t = [n(tx)?, n(ty)?, n(tz)?];
    // Rows of R from the quaternion; the centre is -Rᵀt.
    let r = [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ];
    let center = [0, 1, 2].map(|j| -(0..3).map(|i| r[i][j] * t[i]).sum::<f64>());
    Some(Camera {
        name: name.to_string(),
        center,
        rotation: [w, x, y, z],
    })
}

fn bracketed(s: &str) -> Option<f32> {
    let inner = s.trim().strip_prefix('[')?.split(']').next()?;
    let (i, n) = fraction(inner)?;
    Some(i as f32 / n as f32)
}

fn fraction(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once('/')?;
    let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b > 0 && a <= b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cameras_are_read_from_images_txt() {
        // Two images: one turned 90 degrees about z, one with no 2D points (an empty line).
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let text = format!(
            "# Image list with two lines of data per image:\n# header\n\
             1 {h} 0 0 {h} 1 2 3 1 a.jpg\n10.0 20.0 -1 30.5 40.5 7\n\
             2 1 0 0 0 0 0 5 1 b c.jpg\n\n\
             3 nan 0 0 0 0 0 0 1 bad.jpg\n1 2 3\n"
        );
        let cams = super::cameras(&text);
        assert_eq!(cams.len(), 2, "{cams:?}");
        assert_eq!(cams[0].name, "a.jpg");
        // R is a +90 degree turn about z: Rᵀt = (2, -1, 3), so the centre is (-2, 1, -3).
        for (got, want) in cams[0].center.iter().zip([-2.0, 1.0, -3.0]) {
            assert!((got - want).abs() < 1e-9, "{:?}", cams[0].center);
        }
        assert_eq!(cams[1].center, [0.0, 0.0, -5.0]);
        // Names with spaces keep their first word only in COLMAP's format; ours too.
        assert_eq!(cams[1].name, "b");
        assert!(super::cameras("garbage\n\n\u{0}").is_empty());
    }

    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(extraction("Processed file [3/12]"), Some(0.25));
        assert_eq!(matching("Matching block [1/2, 2/2] in 8.2s"), Some(0.5));
        assert_eq!(matching("Matching block [2/2, 2/2] in 8.2s"), Some(1.0));
        assert_eq!(registering("Registering image #10 (5)", 10), Some(0.5));
        for junk in [
            "Processed file [3/0]",
            "Processed file [4/3]",
            "Matching block [x]",
            "Registering image #1",
            "",
        ] {
            assert_eq!(
                extraction(junk).or(matching(junk)).or(registering(junk, 3)),
                None,
                "{junk}"
            );
        }
    }

    #[test]
    fn model_analyzer_output() {
        let out = "Cameras: 11\nImages: 11\nRegistered images: 11\nPoints: 632\nObservations: 1869\n\
                   Mean track length: 2.957278\nMean reprojection error: 0.274929px\n";
        let lines: Vec<String> = out.lines().map(String::from).collect();
        let s = summary(&lines, 13);
        assert_eq!((s.images, s.registered_images, s.points), (13, 11, 632));
        assert!((s.mean_reprojection_error_px - 0.274929).abs() < 1e-9);
        assert_eq!(summary(&[], 2).registered_images, 0);
    }

    proptest::proptest! {
        /// Any printed text: never a panic, fractions within 0..=1.
        #[test]
        fn any_output_is_safe(line in ".*", images in 0u32..100) {
            for f in [extraction(&line), matching(&line), registering(&line, images)].into_iter().flatten() {
                proptest::prop_assert!((0.0..=1.0).contains(&f), "{f} from {line:?}");
            }
            let _ = summary(&[line], images);
        }

        /// The known lines with any numbers.
        #[test]
        fn any_numbers(a in proptest::num::u32::ANY, b in proptest::num::u32::ANY, c in proptest::num::u32::ANY, d in proptest::num::u32::ANY, images in 0u32..100) {
            let lines = [
                format!("Processed file [{a}/{b}]"),
                format!("Matching block [{a}/{b}, {c}/{d}] in 1.0s"),
                format!("Registering image #{a} ({b})"),
            ];
            for line in &lines {
                for f in [extraction(line), matching(line), registering(line, images)].into_iter().flatten() {
                    proptest::prop_assert!((0.0..=1.0).contains(&f), "{f} from {line:?}");
                }
            }
        }
    }
}
