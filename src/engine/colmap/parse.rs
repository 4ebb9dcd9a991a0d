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
