//! The design prompt for every area × style. Both matches are exhaustive, so
//! a new area or style does not compile until it has words.

use crate::input::{AreaKind, CustomPrompt, PreservationStrength, Style};

fn area_words(area: AreaKind) -> &'static str {
    match area {
        AreaKind::FrontYard => {
            "the front yard as seen from the street, including the lawn, planting beds and the path to the door"
        }
        AreaKind::Backyard => {
            "the backyard seen from above, including lawns, beds, trees and any seating area"
        }
        AreaKind::Walkway => "the walkway and entry path as seen from the street",
        AreaKind::SideYard => "the narrow side yard seen from above, between the house and the property line",
        AreaKind::Patio => "the patio or terrace seen from above, with its paving and surrounding planting",
        AreaKind::PoolArea => "the pool surround seen from above, keeping the pool itself where it is",
    }
}

fn style_words(style: Style) -> &'static str {
    match style {
        Style::ModernMinimalist => {
            "modern minimalist: clean geometric lines, concrete or large-format pavers, ornamental grasses, a restrained palette"
        }
        Style::CaliforniaNative => {
            "California native: drought-tolerant native plants such as manzanita, ceanothus and sages, decomposed granite paths, natural boulders"
        }
        Style::JapaneseZen => {
            "Japanese zen: raked gravel, moss, stone lanterns, Japanese maples, carefully placed rocks and a sense of calm"
        }
        Style::EnglishGarden => {
            "English garden: abundant mixed borders, roses, lavender and foxgloves, a neat lawn edge and brick or flagstone paths"
        }
        Style::DesertLandscape => {
            "desert landscape: agaves, cacti, yuccas and palo verde, gravel mulch and sculptural rocks, very little water"
        }
        Style::Mediterranean => {
            "Mediterranean: olive trees, terracotta pots, rosemary and lavender, warm stone and gravel, a shaded seating area"
        }
        Style::TropicalResort => {
            "tropical resort: palms, banana and bird-of-paradise plants, lush layered foliage, natural stone and warm lighting"
        }
    }
}

/// The words that tell the model how much of the existing property to keep.
fn preservation_words(strength: PreservationStrength) -> &'static str {
    match strength.get() {
        s if s >= 0.75 => {
            "Keep the existing layout, structures and large trees exactly; change planting and surfaces only."
        }
        s if s >= 0.4 => {
            "Keep the house, hardscape footprint and large trees; redesign planting, paths and surfaces freely."
        }
        _ => "Keep the house itself; everything else may be redesigned.",
    }
}

/// The full prompt for one area of one generation.
pub fn design_prompt(
    area: AreaKind,
    style: Style,
    custom: Option<&CustomPrompt>,
    strength: PreservationStrength,
) -> String {
    let mut p = format!(
        "Redesign {} of this property in the style {}. {} Return one photorealistic image from the same viewpoint.",
        area_words(area),
        style_words(style),
        preservation_words(strength),
    );
    if let Some(c) = custom {
        p.push_str(" The owner adds: ");
        p.push_str(c.as_str());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_area_and_style_has_its_own_prompt() {
        let mut seen = HashSet::new();
        for area in AreaKind::ALL {
            for style in Style::ALL {
                let p = design_prompt(*area, *style, None, PreservationStrength::DEFAULT);
                assert!(p.contains(area_words(*area)) && p.contains(style_words(*style)));
                assert!(seen.insert(p), "{area} × {style} repeats another prompt");
            }
        }
        assert_eq!(seen.len(), 6 * 7);
    }

    #[test]
    fn custom_words_and_strength_change_the_prompt() {
        let custom = CustomPrompt::parse("add a fire pit").unwrap();
        let a = design_prompt(
            AreaKind::Patio,
            Style::Mediterranean,
            custom.as_ref(),
            PreservationStrength::DEFAULT,
        );
        assert!(a.ends_with("add a fire pit"));
        let keep = PreservationStrength::parse(0.9).unwrap();
        let free = PreservationStrength::parse(0.1).unwrap();
        assert_ne!(
            design_prompt(AreaKind::Patio, Style::Mediterranean, None, keep),
            design_prompt(AreaKind::Patio, Style::Mediterranean, None, free)
        );
    }
}
