//! The Burn backends compiled into this build, and the one place a program picks among them.
//!
//! Adding a backend is one cargo feature (`Cargo.toml`) and one line in the `backends!` list
//! below: the line names the feature, the `--backend` value, the variant, the Burn type and its
//! rank among the CPU backends (1 = fastest; `None` for a GPU backend). The macro makes the alias,
//! the CLI choice and the dispatch arm. Every command's default is [`BackendKind::default`]: the
//! fastest CPU backend compiled in.

use sinew_backbone::FusedOps;

/// A backend name that is not compiled into this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend `{}` is not compiled in (this build has: {})", .0, compiled_names())]
pub struct UnknownBackend(pub String);

fn compiled_names() -> String {
    let names: Vec<&str> = BackendKind::compiled()
        .into_iter()
        .map(BackendKind::name)
        .collect();
    names.join(", ")
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Work that runs on whichever backend the user picked.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B`, on its default device.
    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<Self::Output>;
}

macro_rules! backends {
    ($($feature:literal => $variant:ident: $alias:ident = $ty:ty, cpu_rank: $rank:expr),+ $(,)?) => {
        $(
            #[cfg(feature = $feature)]
            #[doc = concat!("The `", $feature, "` backend.")]
            pub type $alias = $ty;
        )+

        /// A backend compiled into this build, by its feature's name (`--backend`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum BackendKind {
            $(
                #[cfg(feature = $feature)]
                #[doc = concat!("`", $feature, "`")]
                $variant,
            )+
        }

        impl std::str::FromStr for BackendKind {
            type Err = UnknownBackend;

            fn from_str(s: &str) -> Result<Self, UnknownBackend> {
                Self::compiled()
                    .into_iter()
                    .find(|b| b.name() == s)
                    .ok_or_else(|| UnknownBackend(s.to_string()))
            }
        }

        impl BackendKind {
            /// Runs `job` on this backend.
            pub fn run<J: BackendJob>(self, job: J) -> anyhow::Result<J::Output> {
                match self {
                    $(
                        #[cfg(feature = $feature)]
                        Self::$variant => job.run::<$alias>(&Default::default()),
                    )+
                }
            }

            /// The `--backend` value of this backend.
            pub fn name(self) -> &'static str {
                match self {
                    $(
                        #[cfg(feature = $feature)]
                        Self::$variant => $feature,
                    )+
                }
            }

            /// The backends compiled in, in the order listed.
            pub fn compiled() -> Vec<Self> {
                vec![$( #[cfg(feature = $feature)] Self::$variant, )+]
            }

            /// Its rank among the CPU backends (1 = fastest), `None` for a GPU backend.
            pub fn cpu_rank(self) -> Option<u8> {
                match self {
                    $(
                        #[cfg(feature = $feature)]
                        Self::$variant => $rank,
                    )+
                }
            }
        }

        /// The fastest CPU backend compiled in (the first compiled when only GPU backends are).
        impl Default for BackendKind {
            fn default() -> Self {
                let compiled = Self::compiled();
                compiled
                    .iter()
                    .copied()
                    .filter_map(|b| b.cpu_rank().map(|rank| (rank, b)))
                    .min_by_key(|&(rank, _)| rank)
                    .map_or(compiled[0], |(_, b)| b)
            }
        }
    };
}

backends! {
    "ndarray" => Ndarray: NdArrayBackend = burn::backend::NdArray<f32>, cpu_rank: Some(2),
    "flex" => Flex: FlexBackend = burn::backend::Flex, cpu_rank: Some(1),
    "wgpu" => Wgpu: WgpuBackend = burn::backend::Wgpu, cpu_rank: None,
}

#[cfg(not(any(feature = "ndarray", feature = "flex", feature = "wgpu")))]
compile_error!("enable at least one backend feature: ndarray, flex or wgpu");

#[cfg(test)]
mod tests {
    use super::BackendKind;

    /// The default is the compiled backend with the lowest CPU rank, never a GPU backend when a
    /// CPU one is compiled in.
    #[test]
    fn the_default_is_the_fastest_cpu_backend() {
        let default = BackendKind::default();
        let best = BackendKind::compiled()
            .into_iter()
            .filter_map(BackendKind::cpu_rank)
            .min();
        assert_eq!(default.cpu_rank(), best);
        #[cfg(feature = "flex")]
        assert_eq!(default.name(), "flex");
    }
}
