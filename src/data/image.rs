//! An 8-bit image in memory, row-major, channels interleaved (HWC).

/// An 8-bit image: `height × width × channels` bytes, row-major, channels
/// interleaved. `channels` is 1 (grayscale) or 3 (RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 or 3.
    pub channels: u8,
    /// `height · width · channels` bytes.
    pub data: Vec<u8>,
}

impl Image {
    /// Decodes one image file (JPEG, PNG) to RGB; the error names the file.
    pub fn open(path: &std::path::Path) -> crate::Result<Image> {
        let img = image::ImageReader::open(path)
            .map_err(|e| crate::Error::io(path, e))?
            .with_guessed_format()
            .map_err(|e| crate::Error::io(path, e))?
            .decode()
            .map_err(|e| crate::Error::Data {
                path: path.to_path_buf(),
                message: format!("cannot decode image: {e}"),
            })?
            .into_rgb8();
        let (w, h) = img.dimensions();
        Ok(Image::new(w, h, 3, img.into_raw()))
    }

    /// An image from its bytes; `data.len()` must equal `height · width · channels`.
    pub fn new(width: u32, height: u32, channels: u8, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), (width * height) as usize * channels as usize);
        Image {
            width,
            height,
            channels,
            data,
        }
    }

    /// The value of channel `c` at row `y`, column `x`.
    pub fn at(&self, x: u32, y: u32, c: u8) -> u8 {
        self.data[((y * self.width + x) as usize) * self.channels as usize + c as usize]
    }

    /// The same image with 3 channels (grayscale replicated; RGB unchanged).
    pub fn to_rgb(&self) -> Image {
        if self.channels == 3 {
            return self.clone();
        }
        let data = self.data.iter().flat_map(|&v| [v, v, v]).collect();
        Image::new(self.width, self.height, 3, data)
    }
}
