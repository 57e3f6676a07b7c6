//! Designs differ visibly by area and style: the prompt Terrace sends picks
//! the picture, and every area × style of the domain's prompt is recognised.

use crate::*;
use base64::Engine as _;
use std::collections::HashSet;
use terrace_domain::prompt::design_prompt;
use terrace_domain::{AreaKind, PreservationStrength, Style};

/// The decoded RGB pixels of a PNG, with its side.
fn pixels(png_bytes: &[u8]) -> (u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a valid PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a valid PNG frame");
    assert_eq!(info.width, info.height);
    buf.truncate(info.buffer_size());
    (info.width, buf)
}

/// The design the simulator's Gemini draws for `prompt`.
async fn drawn(sim: &terrace_simulator::Simulator, prompt: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "contents": [{"role": "user", "parts": [
            {"text": prompt},
            {"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}},
        ]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    });
    let text = http()
        .post(gemini_url(sim))
        .header("x-goog-api-key", sim.gemini_key())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    let events = sse_events(&text);
    let data = events
        .iter()
        .find_map(|e| e["candidates"][0]["content"]["parts"][0]["inlineData"]["data"].as_str())
        .expect("an image part");
    base64::engine::general_purpose::STANDARD.decode(data).expect("base64")
}

fn prompt(area: AreaKind, style: Style) -> String {
    design_prompt(area, style, None, PreservationStrength::DEFAULT)
}

#[tokio::test]
async fn two_styles_give_different_images_and_so_do_two_areas() {
    let sim = start().await;
    let zen = drawn(&sim, &prompt(AreaKind::FrontYard, Style::JapaneseZen)).await;
    let tropical = drawn(&sim, &prompt(AreaKind::FrontYard, Style::TropicalResort)).await;
    let backyard = drawn(&sim, &prompt(AreaKind::Backyard, Style::JapaneseZen)).await;
    let (side, zen_px) = pixels(&zen);
    assert_eq!(side, 256);
    let (_, tropical_px) = pixels(&tropical);
    let (_, backyard_px) = pixels(&backyard);
    // Visibly: most of the picture changes colour, not a few pixels.
    let differ = |a: &[u8], b: &[u8]| a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x != y).count();
    let total = (side * side) as usize;
    assert!(differ(&zen_px, &tropical_px) > total / 3, "styles share most pixels");
    assert!(differ(&zen_px, &backyard_px) > total / 5, "areas share most pixels");
    // The same request draws the same picture.
    assert_eq!(drawn(&sim, &prompt(AreaKind::FrontYard, Style::JapaneseZen)).await, zen);
    // A prompt that names no design gets the plain picture.
    assert_eq!(drawn(&sim, "a zen garden").await, sim.image());
    assert!(sim.shutdown().await);
}

#[tokio::test]
async fn every_area_and_style_of_the_prompt_has_its_own_picture() {
    let sim = start().await;
    let mut seen = HashSet::new();
    for &area in AreaKind::ALL {
        for &style in Style::ALL {
            let png = drawn(&sim, &prompt(area, style)).await;
            assert!(png.len() < 12 * 1024, "{area:?} {style:?}: {} bytes", png.len());
            pixels(&png);
            assert!(seen.insert(png), "{area:?} {style:?} looks like another design");
        }
    }
    assert!(sim.shutdown().await);
}
