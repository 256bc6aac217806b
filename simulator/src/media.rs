//! Real, playable media bytes, deterministic for the same seed: a sine tone as WAV, raw PCM and
//! FLAC; silence as MP3, AAC (ADTS) and Opus (Ogg); a colour gradient as PNG, JPEG and WebP.

use sha2::{Digest, Sha256};

/// Speech sample rate (OpenAI's PCM output is 24 kHz, 16-bit, mono).
pub const SAMPLE_RATE: u32 = 24_000;

/// A seed derived from any request bytes.
pub fn seed_of(input: &[u8]) -> [u8; 32] {
    Sha256::digest(input).into()
}

/// `seconds` of a sine tone whose pitch depends on `seed`, with short fades, 16-bit mono.
pub fn tone(seed: &[u8; 32], seconds: f64) -> Vec<i16> {
    let n = (seconds * f64::from(SAMPLE_RATE)).round() as usize;
    let freq = 220.0 + f64::from(u16::from_le_bytes([seed[0], seed[1]]) % 660);
    let fade = (SAMPLE_RATE / 100) as usize; // 10 ms, so the clip starts and ends without a click
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let edge = i.min(n - 1 - i).min(fade) as f64 / fade as f64;
            (0.3 * edge * (2.0 * std::f64::consts::PI * freq * t).sin() * f64::from(i16::MAX))
                as i16
        })
        .collect()
}

/// Raw PCM: 24 kHz, 16-bit little-endian, mono, no header.
pub fn pcm(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A canonical 44-byte-header PCM WAV file.
pub fn wav(samples: &[i16]) -> Vec<u8> {
    let data = pcm(samples);
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// MP3: an ID3v2.3 tag naming the seed, then silent MPEG-1 Layer III frames (44.1 kHz, 32 kbit/s,
/// mono; all-zero side information decodes to silence).
pub fn mp3(seed: &[u8; 32], seconds: f64) -> Vec<u8> {
    const FRAME_LEN: usize = 104; // 144 * 32000 / 44100, no padding
    const SAMPLES_PER_FRAME: f64 = 1152.0;
    let frames = ((seconds * 44_100.0) / SAMPLES_PER_FRAME).ceil().max(1.0) as usize;
    let mut out = id3_tag(seed);
    for _ in 0..frames {
        let mut frame = [0u8; FRAME_LEN];
        frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x10, 0xC4]);
        out.extend_from_slice(&frame);
    }
    out
}

fn id3_tag(seed: &[u8; 32]) -> Vec<u8> {
    let mut body = vec![0u8]; // ISO-8859-1
    body.extend_from_slice(b"simulator\0");
    body.extend_from_slice(hex::encode(&seed[..8]).as_bytes());
    let mut frame = b"TXXX".to_vec();
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&body);
    let size = frame.len() as u32;
    let syncsafe = [
        ((size >> 21) & 0x7F) as u8,
        ((size >> 14) & 0x7F) as u8,
        ((size >> 7) & 0x7F) as u8,
        (size & 0x7F) as u8,
    ];
    let mut out = b"ID3\x03\x00\x00".to_vec();
    out.extend_from_slice(&syncsafe);
    out.extend_from_slice(&frame);
    out
}

/// AAC-LC in ADTS at 24 kHz mono: frames of one silent single-channel element (max_sfb = 0).
pub fn aac(seconds: f64) -> Vec<u8> {
    const RAW_SILENCE: [u8; 4] = [0x01, 0x40, 0x20, 0x07];
    const FRAME_LEN: u16 = 7 + RAW_SILENCE.len() as u16;
    let frames = ((seconds * f64::from(SAMPLE_RATE)) / 1024.0)
        .ceil()
        .max(1.0) as usize;
    let header = [
        0xFF,
        0xF1,                               // sync, MPEG-4, layer 0, no CRC
        (1 << 6) | (6 << 2),                // AAC LC, 24 kHz (index 6), channel config high bit 0
        (1 << 6) | (FRAME_LEN >> 11) as u8, // channel config 1 (mono), length high bits
        ((FRAME_LEN >> 3) & 0xFF) as u8,
        (((FRAME_LEN & 0x7) as u8) << 5) | 0x1F, // length low bits, buffer fullness 0x7FF
        0xFC,                                    // fullness, one raw data block
    ];
    let mut out = Vec::with_capacity(frames * FRAME_LEN as usize);
    for _ in 0..frames {
        out.extend_from_slice(&header);
        out.extend_from_slice(&RAW_SILENCE);
    }
    out
}

/// Ogg Opus at 48 kHz mono: OpusHead, OpusTags, then silent 20 ms CELT packets.
pub fn opus(seconds: f64) -> Vec<u8> {
    const SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
    const PRE_SKIP: u16 = 312;
    let serial = 0x5349_4D55; // "SIMU"
    let packets = (seconds / 0.02).ceil().max(1.0) as usize;
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&PRE_SKIP.to_le_bytes());
    head.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // original input rate
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // mapping family
    let vendor = b"provider-sim";
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor);
    tags.extend_from_slice(&0u32.to_le_bytes());

    let mut out = Vec::new();
    let mut seq = 0;
    ogg_page(&mut out, 0x02, 0, serial, &mut seq, &[&head]);
    ogg_page(&mut out, 0x00, 0, serial, &mut seq, &[&tags]);
    let chunks: Vec<_> = (0..packets).collect::<Vec<_>>();
    let pages: Vec<_> = chunks.chunks(255).collect();
    let mut samples = u64::from(PRE_SKIP);
    for (i, page) in pages.iter().enumerate() {
        samples += page.len() as u64 * 960;
        let flags = if i + 1 == pages.len() { 0x04 } else { 0x00 };
        let data: Vec<&[u8]> = page.iter().map(|_| &SILENCE[..]).collect();
        ogg_page(&mut out, flags, samples, serial, &mut seq, &data);
    }
    out
}

/// Appends one Ogg page holding whole `packets` (each under 255 bytes here).
fn ogg_page(
    out: &mut Vec<u8>,
    flags: u8,
    granule: u64,
    serial: u32,
    seq: &mut u32,
    packets: &[&[u8]],
) {
    let start = out.len();
    out.extend_from_slice(b"OggS");
    out.push(0);
    out.push(flags);
    out.extend_from_slice(&granule.to_le_bytes());
    out.extend_from_slice(&serial.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled below
    let mut lacing = Vec::new();
    for p in packets {
        let mut len = p.len();
        while len >= 255 {
            lacing.push(255);
            len -= 255;
        }
        lacing.push(len as u8);
    }
    out.push(lacing.len() as u8);
    out.extend_from_slice(&lacing);
    for p in packets {
        out.extend_from_slice(p);
    }
    let crc = ogg_crc(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
    *seq += 1;
}

fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// FLAC, 24 kHz 16-bit mono, verbatim subframes of 4096 samples.
pub fn flac(samples: &[i16]) -> Vec<u8> {
    const BLOCK: usize = 4096;
    let mut out = b"fLaC".to_vec();
    out.push(0x80); // last metadata block, STREAMINFO
    out.extend_from_slice(&[0, 0, 34]);
    out.extend_from_slice(&(BLOCK as u16).to_be_bytes()); // min block size
    out.extend_from_slice(&(BLOCK as u16).to_be_bytes()); // max block size
    out.extend_from_slice(&[0; 6]); // min/max frame size unknown
    let total = samples.len() as u64;
    // 20 bits rate, 3 bits channels-1, 5 bits bps-1, 36 bits total samples.
    let packed: u64 = (u64::from(SAMPLE_RATE) << 44) | (15u64 << 36) | (total & 0xF_FFFF_FFFF);
    out.extend_from_slice(&packed.to_be_bytes());
    out.extend_from_slice(&[0; 16]); // MD5 unknown
    for (index, block) in samples.chunks(BLOCK).enumerate() {
        let start = out.len();
        let full = block.len() == BLOCK;
        out.extend_from_slice(&[0xFF, 0xF8]); // sync, fixed block size
        // Block size code: 4096 = 0b1100, else 16-bit (size-1) at the end; 24 kHz = 0b0111.
        out.push(if full { 0xC7 } else { 0x77 });
        out.push(0x08); // mono, 16 bits per sample
        out.extend_from_slice(&utf8_number(index as u32));
        if !full {
            out.extend_from_slice(&((block.len() - 1) as u16).to_be_bytes());
        }
        let crc8 = crc8(&out[start..]);
        out.push(crc8);
        out.push(0x02); // verbatim subframe, no wasted bits
        for s in block {
            out.extend_from_slice(&s.to_be_bytes());
        }
        let crc16 = crc16(&out[start..]);
        out.extend_from_slice(&crc16.to_be_bytes());
    }
    out
}

/// FLAC's "UTF-8" coding of frame numbers.
fn utf8_number(n: u32) -> Vec<u8> {
    char::from_u32(n)
        .map(|c| c.to_string().into_bytes())
        .unwrap_or_else(|| vec![0])
}

fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// An RGB gradient whose colours depend on `seed`.
pub fn gradient(seed: &[u8; 32], width: u32, height: u32) -> Vec<u8> {
    let (a, b) = ([seed[0], seed[1], seed[2]], [seed[3], seed[4], seed[5]]);
    let mut rgb = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let t = (x + y) as f32 / (width + height) as f32;
            for c in 0..3 {
                rgb.push((f32::from(a[c]) * (1.0 - t) + f32::from(b[c]) * t) as u8);
            }
        }
    }
    rgb
}

/// Encodes RGB pixels as PNG.
pub fn png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Encodes RGB pixels as baseline JPEG.
pub fn jpeg(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(
            rgb,
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Encodes RGB pixels as lossless WebP.
pub fn webp(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(rgb, width, height, image_webp::ColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A small, valid H.264 MP4 (baseline, lossless I_PCM frames, 64x64 at 2 fps) whose colour
/// moves with `seed` and time: `seconds` long.
pub fn mp4(seed: &[u8; 32], seconds: u32) -> Result<Vec<u8>, String> {
    use less_avc::ycbcr_image::{DataPlane, Planes, YCbCrImage};
    use less_avc::{BitDepth, LessEncoder};
    const SIDE: u32 = 64;
    const FPS: u32 = 2;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let frames = (seconds.max(1) * FPS) as usize;
    let luma_len = (SIDE * SIDE) as usize;
    let chroma_len = luma_len / 4;
    let frame_planes = |i: usize| {
        let shift = (i * 255 / frames) as u8;
        let y: Vec<u8> = (0..luma_len)
            .map(|p| {
                seed[p % 32]
                    .wrapping_add((p % SIDE as usize) as u8)
                    .wrapping_add(shift)
            })
            .collect();
        (
            y,
            vec![seed[1]; chroma_len],
            vec![seed[2].wrapping_add(shift); chroma_len],
        )
    };
    let first = frame_planes(0);
    fn plane(data: &[u8], stride: usize) -> DataPlane<'_> {
        DataPlane {
            data,
            stride,
            bit_depth: BitDepth::Depth8,
        }
    }
    fn to_image(p: &(Vec<u8>, Vec<u8>, Vec<u8>)) -> YCbCrImage<'_> {
        YCbCrImage {
            planes: Planes::YCbCr((
                plane(&p.0, SIDE as usize),
                plane(&p.1, SIDE as usize / 2),
                plane(&p.2, SIDE as usize / 2),
            )),
            width: SIDE,
            height: SIDE,
        }
    }
    let (initial, mut encoder) = LessEncoder::new(&to_image(&first)).map_err(|e| err(&e))?;
    let sps = initial.sps.to_nal_unit();
    let pps = initial.pps.to_nal_unit();
    let mut samples = vec![initial.frame.to_nal_unit()];
    for i in 1..frames {
        let nal = encoder
            .encode(&to_image(&frame_planes(i)))
            .map_err(|e| err(&e))?;
        samples.push(nal.to_nal_unit());
    }

    let config = mp4::Mp4Config {
        major_brand: str::parse("isom").map_err(|e| err(&e))?,
        minor_version: 512,
        compatible_brands: ["isom", "iso2", "avc1", "mp41"]
            .iter()
            .map(|b| str::parse(b))
            .collect::<Result<_, _>>()
            .map_err(|e| err(&e))?,
        timescale: 1000,
    };
    let mut writer = mp4::Mp4Writer::write_start(std::io::Cursor::new(Vec::new()), &config)
        .map_err(|e| err(&e))?;
    writer
        .add_track(&mp4::TrackConfig {
            track_type: mp4::TrackType::Video,
            timescale: 1000,
            language: "und".into(),
            media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                width: SIDE as u16,
                height: SIDE as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .map_err(|e| err(&e))?;
    let frame_ms = 1000 / FPS;
    for (i, nal) in samples.into_iter().enumerate() {
        // MP4 samples carry NAL units with a 4-byte length, not Annex B start codes.
        let mut bytes = (nal.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&nal);
        writer
            .write_sample(
                1,
                &mp4::Mp4Sample {
                    start_time: (i as u64) * u64::from(frame_ms),
                    duration: frame_ms,
                    rendering_offset: 0,
                    is_sync: true,
                    bytes: bytes.into(),
                },
            )
            .map_err(|e| err(&e))?;
    }
    writer.write_end().map_err(|e| err(&e))?;
    Ok(writer.into_writer().into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_describes_the_samples() {
        let samples = tone(&seed_of(b"x"), 0.5);
        let w = wav(&samples);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(
            u32::from_le_bytes(w[24..28].try_into().unwrap()),
            SAMPLE_RATE
        );
        assert_eq!(
            u32::from_le_bytes(w[40..44].try_into().unwrap()) as usize,
            samples.len() * 2
        );
        assert_eq!(w.len(), 44 + samples.len() * 2);
        assert!(samples.iter().any(|s| s.unsigned_abs() > 5000), "audible");
    }

    #[test]
    fn mp3_frames_follow_the_tag() {
        let m = mp3(&seed_of(b"x"), 1.0);
        assert_eq!(&m[..3], b"ID3");
        let size = m[6..10]
            .iter()
            .fold(0usize, |acc, b| (acc << 7) | *b as usize);
        let frames = &m[10 + size..];
        assert_eq!(frames.len() % 104, 0);
        assert!(frames.chunks(104).all(|f| f[..2] == [0xFF, 0xFB]));
        assert_eq!(
            frames.len() / 104,
            39,
            "ceil(44100 / 1152) frames for one second"
        );
    }

    #[test]
    fn ogg_pages_carry_valid_checksums() {
        let o = opus(1.0);
        let mut pos = 0;
        let mut pages = 0;
        while pos < o.len() {
            assert_eq!(&o[pos..pos + 4], b"OggS");
            let nseg = o[pos + 26] as usize;
            let body: usize = o[pos + 27..pos + 27 + nseg]
                .iter()
                .map(|&b| b as usize)
                .sum();
            let len = 27 + nseg + body;
            let mut page = o[pos..pos + len].to_vec();
            let stored = u32::from_le_bytes(page[22..26].try_into().unwrap());
            page[22..26].fill(0);
            assert_eq!(ogg_crc(&page), stored);
            pos += len;
            pages += 1;
        }
        assert_eq!(pages, 3);
        assert_eq!(&o[28..36], b"OpusHead");
    }

    #[test]
    fn flac_frames_have_sync_and_crc() {
        let samples = tone(&seed_of(b"y"), 0.5);
        let f = flac(&samples);
        assert_eq!(&f[..4], b"fLaC");
        let first = 4 + 4 + 34;
        assert_eq!(&f[first..first + 2], &[0xFF, 0xF8]);
        let frame_len = 6 + 1 + 2 * 4096 + 2;
        let frame = &f[first..first + frame_len];
        assert_eq!(
            crc16(&frame[..frame_len - 2]).to_be_bytes(),
            frame[frame_len - 2..]
        );
    }

    #[test]
    fn aac_frames_declare_their_length() {
        let a = aac(0.1);
        assert_eq!(a.len() % 11, 0);
        for f in a.chunks(11) {
            assert_eq!(&f[..2], &[0xFF, 0xF1]);
            let len = ((u16::from(f[3] & 0x3) << 11)
                | (u16::from(f[4]) << 3)
                | (u16::from(f[5]) >> 5)) as usize;
            assert_eq!(len, 11);
        }
    }

    #[test]
    fn images_decode_as_their_format() {
        let rgb = gradient(&seed_of(b"z"), 64, 32);
        let p = png(&rgb, 64, 32).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(p));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (64, 32));
        let j = jpeg(&rgb, 64, 32).unwrap();
        assert_eq!(&j[..2], &[0xFF, 0xD8]);
        let w = webp(&rgb, 64, 32).unwrap();
        assert_eq!((&w[..4], &w[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));
    }
}
