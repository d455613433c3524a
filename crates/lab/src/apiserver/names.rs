//! Generated names, as Kubernetes makes them.

/// A suffix for a generated name (`generateName`, a controller's pods), from the
/// alphabet Kubernetes uses for them.
pub fn random_suffix() -> String {
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| NAME_ALPHABET[*b as usize % NAME_ALPHABET.len()] as char)
        .collect()
}

/// The letters and digits of generated names: no vowels, no look-alikes.
pub const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
