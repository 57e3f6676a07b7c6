//! Valid PNGs made in code, so every image the simulator returns is a real
//! image that decoders and browsers accept.
//!
//! - [`picture`]: a 64×64 lawn under a sky with a path, for Maps imagery and
//!   for design requests whose prompt names no area or style.
//! - [`design`]: a 256×256 plan of one area in one style — the area sets the
//!   layout, the style the palette and texture — with both written into it,
//!   so designs differ visibly by area and style. [`Design::from_prompt`]
//!   reads them from the prompt Terrace sends.
//!
//! Both are 8-bit PNGs compressed with fixed-Huffman deflate whose only
//! matches are runs (the previous byte or the row above): solid shapes cost
//! a few bits per run, so a design is a few kilobytes and is built in well
//! under a millisecond.

/// Width and height of [`picture`], in pixels.
pub const SIDE: u32 = 64;
/// Width and height of a [`design`], in pixels.
pub const DESIGN_SIDE: usize = 256;

/// The areas, as Terrace's prompt starts them ("Redesign the front yard …"),
/// and the name written on the image.
const AREAS: [(&str, &str); 6] = [
    ("redesign the front yard", "FRONT YARD"),
    ("redesign the backyard", "BACKYARD"),
    ("redesign the walkway", "WALKWAY"),
    ("redesign the narrow side yard", "SIDE YARD"),
    ("redesign the patio", "PATIO"),
    ("redesign the pool surround", "POOL AREA"),
];

/// The styles, as the prompt names them ("in the style japanese zen: …").
const STYLES: [(&str, &str); 7] = [
    ("in the style modern minimalist:", "MODERN MINIMALIST"),
    ("in the style california native:", "CALIFORNIA NATIVE"),
    ("in the style japanese zen:", "JAPANESE ZEN"),
    ("in the style english garden:", "ENGLISH GARDEN"),
    ("in the style desert landscape:", "DESERT LANDSCAPE"),
    ("in the style mediterranean:", "MEDITERRANEAN"),
    ("in the style tropical resort:", "TROPICAL RESORT"),
];

type Rgb = [u8; 3];

/// Per style: ground, path, two plants, an accent, a ground shade, and the
/// texture of the ground.
struct Palette {
    colours: [Rgb; 6],
    texture: Texture,
}

#[derive(Clone, Copy)]
enum Texture {
    Speckle,
    Raked,
    Mown,
}

const PALETTES: [Palette; 8] = [
    // modern minimalist: grey gravel, pale pavers, grasses, charcoal
    Palette {
        colours: [
            [184, 188, 182],
            [230, 228, 222],
            [111, 143, 95],
            [167, 181, 154],
            [59, 63, 66],
            [170, 174, 168],
        ],
        texture: Texture::Speckle,
    },
    // california native: decomposed granite, sage, manzanita, boulders
    Palette {
        colours: [
            [201, 178, 138],
            [216, 199, 164],
            [124, 143, 90],
            [156, 107, 78],
            [168, 159, 145],
            [187, 163, 122],
        ],
        texture: Texture::Speckle,
    },
    // japanese zen: raked gravel, stepping stones, moss, maple, lantern
    Palette {
        colours: [
            [217, 214, 204],
            [140, 140, 132],
            [79, 125, 58],
            [176, 58, 46],
            [94, 94, 88],
            [196, 192, 180],
        ],
        texture: Texture::Raked,
    },
    // english garden: lawn, brick, roses, lavender, yellow
    Palette {
        colours: [
            [93, 156, 74],
            [160, 82, 45],
            [201, 79, 124],
            [142, 124, 195],
            [242, 209, 107],
            [82, 140, 64],
        ],
        texture: Texture::Mown,
    },
    // desert landscape: sand gravel, path, agave, cactus, rock
    Palette {
        colours: [
            [216, 176, 122],
            [192, 138, 85],
            [122, 154, 106],
            [95, 127, 79],
            [155, 107, 74],
            [200, 160, 108],
        ],
        texture: Texture::Speckle,
    },
    // mediterranean: warm gravel, stone, olive, lavender, terracotta
    Palette {
        colours: [
            [217, 195, 154],
            [227, 213, 184],
            [125, 143, 105],
            [142, 124, 195],
            [192, 100, 60],
            [201, 178, 136],
        ],
        texture: Texture::Speckle,
    },
    // tropical resort: lush lawn, stone, palms, bird of paradise, gold
    Palette {
        colours: [
            [63, 143, 58],
            [205, 184, 145],
            [31, 107, 58],
            [232, 116, 59],
            [242, 201, 76],
            [54, 128, 50],
        ],
        texture: Texture::Mown,
    },
    // no style named: a plain garden
    Palette {
        colours: [
            [110, 160, 90],
            [196, 180, 150],
            [60, 120, 60],
            [150, 170, 80],
            [120, 110, 100],
            [100, 150, 82],
        ],
        texture: Texture::Mown,
    },
];

/// Palette indices shared by every design; the style's six follow.
const BAND: u8 = 0;
const INK: u8 = 1;
const SKY: u8 = 2;
const WALL: u8 = 3;
const ROOF: u8 = 4;
const WATER: u8 = 5;
const GROUND: u8 = 6;
const PATH: u8 = 7;
const PLANT: u8 = 8;
const BLOOM: u8 = 9;
const ACCENT: u8 = 10;
const SHADE: u8 = 11;
const SHARED: [Rgb; 6] =
    [[28, 42, 31], [255, 255, 255], [150, 196, 232], [226, 220, 208], [110, 84, 72], [64, 150, 210]];

/// Which design a prompt asks for: indices into the areas and styles, or
/// `None` for what the prompt does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Design {
    pub area: Option<u8>,
    pub style: Option<u8>,
}

impl Design {
    /// Reads the area and style from the prompt Terrace sends
    /// (`terrace_domain::prompt::design_prompt`).
    pub fn from_prompt(prompt: &str) -> Self {
        let p = prompt.to_ascii_lowercase();
        let find = |table: &[(&str, &str)]| {
            table.iter().position(|(needle, _)| p.contains(needle)).and_then(|i| u8::try_from(i).ok())
        };
        Self { area: find(&AREAS), style: find(&STYLES) }
    }

    /// Whether the prompt named neither (then the plain [`picture`] answers).
    pub fn is_unnamed(self) -> bool {
        self.area.is_none() && self.style.is_none()
    }
}

/// The 64×64 picture: a lawn under a sky with a path (8-bit RGB).
pub fn picture() -> Vec<u8> {
    let side = SIDE as usize;
    let mut raw = Vec::with_capacity(side * (side * 3 + 1));
    for y in 0..side {
        raw.push(0); // filter: none
        for x in 0..side {
            let px = if y < side / 3 {
                [120, 180u8.saturating_add((y * 2) as u8), 235]
            } else if x.abs_diff(side / 2) < (y - side / 3) / 3 + 2 {
                [196, 180, 150]
            } else {
                let shade = ((x * 7 + y * 13) % 24) as u8;
                [40 + shade, 140 + shade, 50]
            };
            raw.extend_from_slice(&px);
        }
    }
    encode(side as u32, 2, None, &raw, side * 3 + 1)
}

/// A design's picture as a PNG.
pub fn design(d: Design) -> Vec<u8> {
    let mut c = Canvas::new();
    let palette = &PALETTES[usize::from(d.style.unwrap_or(7)).min(7)];
    c.ground(palette.texture);
    match d.area {
        Some(0) => front_yard(&mut c),
        Some(1) => backyard(&mut c),
        Some(2) => walkway(&mut c),
        Some(3) => side_yard(&mut c),
        Some(4) => patio(&mut c),
        Some(5) => pool_area(&mut c),
        _ => backyard(&mut c),
    }
    let area = d.area.map_or("GARDEN", |i| AREAS[usize::from(i)].1);
    let style = d.style.map_or("DESIGN", |i| STYLES[usize::from(i)].1);
    c.label(area, style);

    let mut plte = Vec::with_capacity(12 * 3);
    for rgb in SHARED.iter().chain(palette.colours.iter()) {
        plte.extend_from_slice(rgb);
    }
    let stride = DESIGN_SIDE + 1;
    let mut raw = Vec::with_capacity(DESIGN_SIDE * stride);
    for row in c.px.chunks(DESIGN_SIDE) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    encode(DESIGN_SIDE as u32, 3, Some(&plte), &raw, stride)
}

/// Palette indices, row by row.
struct Canvas {
    px: Vec<u8>,
}

/// The label band at the bottom.
const BAND_TOP: usize = DESIGN_SIDE - 44;

impl Canvas {
    fn new() -> Self {
        Self { px: vec![GROUND; DESIGN_SIDE * DESIGN_SIDE] }
    }

    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, colour: u8) {
        for y in y0.min(DESIGN_SIDE)..y1.min(DESIGN_SIDE) {
            self.px[y * DESIGN_SIDE + x0.min(DESIGN_SIDE)..y * DESIGN_SIDE + x1.min(DESIGN_SIDE)]
                .fill(colour);
        }
    }

    fn disc(&mut self, cx: usize, cy: usize, r: usize, colour: u8) {
        let r2 = (r * r) as isize;
        for y in cy.saturating_sub(r)..(cy + r + 1).min(BAND_TOP) {
            for x in cx.saturating_sub(r)..(cx + r + 1).min(DESIGN_SIDE) {
                let (dx, dy) = (x as isize - cx as isize, y as isize - cy as isize);
                if dx * dx + dy * dy <= r2 {
                    self.px[y * DESIGN_SIDE + x] = colour;
                }
            }
        }
    }

    fn ground(&mut self, texture: Texture) {
        for y in 0..BAND_TOP {
            for x in 0..DESIGN_SIDE {
                let shade = match texture {
                    Texture::Raked => y % 6 == 0,
                    Texture::Mown => (x / 32) % 2 == 1,
                    Texture::Speckle => (x * 7 + y * 13) % 29 == 0,
                };
                if shade {
                    self.px[y * DESIGN_SIDE + x] = SHADE;
                }
            }
        }
    }

    /// Planting along a line: alternating plants and blooms.
    fn bed(&mut self, points: &[(usize, usize)], r: usize) {
        for (i, &(x, y)) in points.iter().enumerate() {
            self.disc(x, y, r, if i % 3 == 1 { BLOOM } else { PLANT });
        }
    }

    /// Two lines of text in the band, 2× the 5×7 font.
    fn label(&mut self, first: &str, second: &str) {
        self.rect(0, BAND_TOP, DESIGN_SIDE, DESIGN_SIDE, BAND);
        self.text(first, BAND_TOP + 5);
        self.text(second, BAND_TOP + 24);
    }

    fn text(&mut self, s: &str, top: usize) {
        const SCALE: usize = 2;
        let width = s.len() * 6 * SCALE;
        let mut x0 = DESIGN_SIDE.saturating_sub(width) / 2;
        for ch in s.bytes() {
            let rows = glyph(ch);
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (x, y) = (x0 + col * SCALE, top + row * SCALE);
                        self.rect(x, y, x + SCALE, y + SCALE, INK);
                    }
                }
            }
            x0 += 6 * SCALE;
        }
    }
}

// The layouts: what each area looks like from the street or from above.

fn front_yard(c: &mut Canvas) {
    c.rect(0, 0, DESIGN_SIDE, 70, SKY);
    c.rect(40, 40, 216, 110, WALL);
    c.rect(30, 28, 226, 44, ROOF);
    c.rect(112, 70, 144, 110, ROOF); // the door
    c.rect(60, 60, 92, 84, SKY);
    c.rect(164, 60, 196, 84, SKY);
    for y in 110..BAND_TOP {
        let half = 16 + (y - 110) / 3;
        c.rect(128 - half, y, 128 + half, y + 1, PATH);
    }
    let left: Vec<_> = (0..7).map(|i| (20 + i * 12, 122 + (i % 2) * 6)).collect();
    let right: Vec<_> = (0..7).map(|i| (164 + i * 12, 122 + (i % 2) * 6)).collect();
    c.bed(&left, 8);
    c.bed(&right, 8);
    c.disc(30, 180, 18, PLANT);
    c.disc(226, 180, 18, ACCENT);
}

fn backyard(c: &mut Canvas) {
    c.rect(0, 0, DESIGN_SIDE, 24, ROOF); // the house, from above
    c.rect(24, 40, 232, BAND_TOP - 16, SHADE);
    c.rect(32, 48, 224, BAND_TOP - 24, GROUND);
    let border: Vec<_> = (0..9).map(|i| (32 + i * 24, 40)).collect();
    c.bed(&border, 10);
    let side: Vec<_> = (0..6).map(|i| (16, 60 + i * 24)).collect();
    c.bed(&side, 10);
    c.disc(196, 110, 30, PLANT);
    c.disc(196, 110, 12, BLOOM);
    c.rect(70, 120, 130, 170, PATH); // seating
    c.rect(90, 135, 110, 155, ACCENT);
}

fn walkway(c: &mut Canvas) {
    for y in 0..BAND_TOP {
        let x = 40 + y * 3 / 4;
        c.rect(x.saturating_sub(22), y, x + 22, y + 1, PATH);
    }
    for i in 0..8 {
        let y = 12 + i * 24;
        let x = 40 + y * 3 / 4;
        c.rect(x - 22, y, x + 22, y + 2, SHADE); // the joints of the paving
        c.disc(x.saturating_sub(50), y, 9, if i % 2 == 0 { PLANT } else { BLOOM });
        c.disc((x + 50).min(250), y + 10, 9, if i % 2 == 0 { BLOOM } else { PLANT });
    }
    c.disc(220, 30, 20, ACCENT);
}

fn side_yard(c: &mut Canvas) {
    c.rect(0, 0, 56, BAND_TOP, WALL);
    c.rect(200, 0, DESIGN_SIDE, BAND_TOP, ROOF); // the fence
    for i in 0..7 {
        c.rect(108, 10 + i * 30, 148, 30 + i * 30, PATH);
    }
    let bed: Vec<_> = (0..8).map(|i| (178, 12 + i * 25)).collect();
    c.bed(&bed, 11);
    let low: Vec<_> = (0..8).map(|i| (74, 24 + i * 25)).collect();
    c.bed(&low, 7);
}

fn patio(c: &mut Canvas) {
    c.rect(48, 40, 208, 180, PATH);
    for i in 0..=8 {
        c.rect(48 + i * 20, 40, 50 + i * 20, 180, SHADE);
    }
    for i in 0..=7 {
        c.rect(48, 40 + i * 20, 208, 42 + i * 20, SHADE);
    }
    c.rect(98, 90, 158, 130, ACCENT); // a table
    for (x, y) in [(48, 40), (208, 40), (48, 180), (208, 180)] {
        c.disc(x, y, 14, BLOOM);
        c.disc(x, y, 6, PLANT);
    }
    let edge: Vec<_> = (0..10).map(|i| (16 + i * 25, 200)).collect();
    c.bed(&edge, 8);
}

fn pool_area(c: &mut Canvas) {
    c.rect(40, 40, 216, 176, PATH); // the coping
    c.rect(56, 56, 200, 160, WATER);
    c.rect(56, 56, 200, 62, SKY);
    let top: Vec<_> = (0..9).map(|i| (28 + i * 25, 22)).collect();
    c.bed(&top, 11);
    c.disc(232, 120, 16, PLANT);
    c.disc(24, 120, 16, PLANT);
    c.rect(80, 184, 120, 200, ACCENT); // loungers
    c.rect(136, 184, 176, 200, ACCENT);
}

/// The 5×7 font: each row's five bits, most significant on the left.
fn glyph(ch: u8) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        b'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        b'B' => [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
        b'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        b'D' => [0x1e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1e],
        b'E' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        b'F' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
        b'G' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        b'H' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        b'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        b'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
        b'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        b'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        b'M' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        b'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        b'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        b'P' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        b'Q' => [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
        b'R' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        b'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        b'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        b'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        b'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        b'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
        b'X' => [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
        b'Y' => [0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04],
        b'Z' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
        _ => [0; 7],
    }
}

// The PNG container and its deflate stream.

/// A PNG of `side`×`side` pixels: colour type 2 (RGB) or 3 (palette), 8 bits.
fn encode(side: u32, colour_type: u8, palette: Option<&[u8]>, raw: &[u8], stride: usize) -> Vec<u8> {
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, colour_type, 0, 0, 0]); // depth 8, deflate, no filter, no interlace

    let idat = zlib(raw, stride);
    let mut out = Vec::with_capacity(idat.len() + 128);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    chunk(&mut out, b"IHDR", &ihdr);
    if let Some(p) = palette {
        chunk(&mut out, b"PLTE", p);
    }
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Writes bits least significant first, as deflate wants.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: sent most significant bit first.
    fn code(&mut self, code: u32, bits: u32) {
        self.put(code.reverse_bits() >> (32 - bits), bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// The fixed literal/length code of `symbol` (RFC 1951 §3.2.6).
fn fixed(bits: &mut Bits, symbol: u32) {
    match symbol {
        0..=143 => bits.code(0x30 + symbol, 8),
        144..=255 => bits.code(0x190 + symbol - 144, 9),
        256..=279 => bits.code(symbol - 256, 7),
        _ => bits.code(0xc0 + symbol - 280, 8),
    }
}

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195,
    227, 258,
];
const LENGTH_EXTRA: [u8; 29] =
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
    4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// The index of the last base not above `v`.
fn bucket(bases: &[u16], v: usize) -> usize {
    bases.iter().rposition(|&b| usize::from(b) <= v).unwrap_or(0)
}

fn put_match(bits: &mut Bits, len: usize, dist: usize) {
    let l = bucket(&LENGTH_BASE, len);
    fixed(bits, 257 + l as u32);
    bits.put((len - usize::from(LENGTH_BASE[l])) as u32, u32::from(LENGTH_EXTRA[l]));
    let d = bucket(&DIST_BASE, dist);
    bits.code(d as u32, 5);
    bits.put((dist - usize::from(DIST_BASE[d])) as u32, u32::from(DIST_EXTRA[d]));
}

/// How many bytes from `i` repeat those `dist` back, at most 258.
fn run(data: &[u8], i: usize, dist: usize) -> usize {
    if i < dist {
        return 0;
    }
    let max = (data.len() - i).min(258);
    (0..max).take_while(|&k| data[i + k] == data[i + k - dist]).count()
}

/// zlib around one fixed-Huffman deflate block whose matches are runs of
/// the previous byte or of the row above (`stride` back).
fn zlib(data: &[u8], stride: usize) -> Vec<u8> {
    let mut bits = Bits { out: vec![0x78, 0x01], acc: 0, n: 0 };
    bits.put(1, 1); // the last block
    bits.put(1, 2); // fixed Huffman codes
    let mut i = 0;
    while i < data.len() {
        let (by_byte, by_row) = (run(data, i, 1), run(data, i, stride));
        let (len, dist) = if by_row > by_byte { (by_row, stride) } else { (by_byte, 1) };
        if len >= 3 {
            put_match(&mut bits, len, dist);
            i += len;
        } else {
            fixed(&mut bits, u32::from(data[i]));
            i += 1;
        }
    }
    fixed(&mut bits, 256);
    let mut out = bits.finish();
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn the_picture_is_a_png() {
        let png = picture();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82])); // IEND's CRC
        assert!(png.len() < 16 * 1024);
    }

    #[test]
    fn prompts_name_their_design() {
        let p = "Redesign the narrow side yard seen from above, between the house and the property line of this \
                 property in the style Japanese zen: raked gravel, moss.";
        assert_eq!(Design::from_prompt(p), Design { area: Some(3), style: Some(2) });
        assert!(Design::from_prompt("Redesign this front yard as a japanese zen garden.").is_unnamed());
    }

    #[test]
    fn every_design_is_small() {
        for area in 0..6 {
            for style in 0..7 {
                let png = design(Design { area: Some(area), style: Some(style) });
                assert!(png.len() < 12 * 1024, "{area} {style}: {} bytes", png.len());
            }
        }
    }
}
