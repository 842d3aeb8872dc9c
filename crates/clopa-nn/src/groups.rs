//! Parameter groups that a training episode unfreezes (DESIGN.md, "Train an episode").
//!
//! * `in` (CLoPA-I.N): every InstanceNorm weight and bias;
//! * `cn` (CLoPA-C.N): `in` + the stem convolution (`encoder.stem.convs.0.conv.{weight,bias}`) +
//!   the segmentation head in use without deep supervision (`decoder.seg_layers.<last>`);
//! * `all`: every parameter.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::arch::UNetSpec;
use crate::error::NnError;

/// A trainable parameter group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamGroup {
    /// Instance-norm affine parameters.
    In,
    /// `in` + stem conv + last segmentation layer.
    Cn,
    /// Every parameter.
    All,
}

impl ParamGroup {
    /// All groups, in the order reports list them.
    pub const ALL: [ParamGroup; 3] = [ParamGroup::In, ParamGroup::Cn, ParamGroup::All];

    /// The group's name as used on command lines and in checkpoint metadata.
    pub fn name(self) -> &'static str {
        match self {
            ParamGroup::In => "in",
            ParamGroup::Cn => "cn",
            ParamGroup::All => "all",
        }
    }

    /// Whether the canonical parameter `name` of a network built from `spec` belongs to the group.
    pub fn contains(self, spec: &UNetSpec, name: &str) -> bool {
        let is_norm = name.contains(".norm.");
        match self {
            ParamGroup::In => is_norm,
            ParamGroup::Cn => {
                is_norm
                    || name.starts_with("encoder.stem.convs.0.conv.")
                    || name
                        .strip_prefix(spec.last_seg_layer().as_str())
                        .is_some_and(|rest| rest == ".weight" || rest == ".bias")
            }
            ParamGroup::All => true,
        }
    }

    /// The group's canonical parameter names (PyTorch order).
    pub fn names(self, spec: &UNetSpec) -> Vec<String> {
        spec.parameter_shapes()
            .into_iter()
            .filter(|(n, _)| self.contains(spec, n))
            .map(|(n, _)| n)
            .collect()
    }

    /// Number of scalar parameters in the group (from shapes, nothing allocated).
    pub fn count(self, spec: &UNetSpec) -> usize {
        spec.parameter_shapes()
            .iter()
            .filter(|(n, _)| self.contains(spec, n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

impl fmt::Display for ParamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ParamGroup {
    type Err = NnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "in" => Ok(ParamGroup::In),
            "cn" => Ok(ParamGroup::Cn),
            "all" => Ok(ParamGroup::All),
            other => Err(NnError::Arch(format!(
                "unknown parameter group `{other}` (in, cn or all)"
            ))),
        }
    }
}

/// Parameter counts of a network: `{"total": n, "groups": {"in": n, "cn": n, "all": n}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Every scalar parameter.
    pub total: usize,
    /// Per group.
    pub groups: std::collections::BTreeMap<String, usize>,
}

/// Counts every group of a network built from `spec`.
pub fn param_counts(spec: &UNetSpec) -> ParamCounts {
    ParamCounts {
        total: spec.num_parameters(),
        groups: ParamGroup::ALL
            .iter()
            .map(|g| (g.name().to_string(), g.count(spec)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Architecture;

    #[test]
    fn v1_group_sizes_match_the_reference() {
        let spec =
            UNetSpec::from_architecture(&Architecture::nninteractive_v1(), 8, 2).expect("spec");
        let c = param_counts(&spec);
        assert_eq!(c.total, 102_355_818);
        assert_eq!(c.groups["in"], 27_648);
        assert_eq!(c.groups["cn"], 34_658);
        assert_eq!(c.groups["all"], 102_355_818);
        // 62 norms → 124 tensors; cn adds the stem conv (w, b) and seg_layers.4 (w, b).
        assert_eq!(ParamGroup::In.names(&spec).len(), 124);
        assert_eq!(ParamGroup::Cn.names(&spec).len(), 128);
        assert!(ParamGroup::Cn.contains(&spec, "decoder.seg_layers.4.bias"));
        assert!(!ParamGroup::Cn.contains(&spec, "decoder.seg_layers.3.bias"));
        assert!(!ParamGroup::Cn.contains(&spec, "encoder.stages.0.blocks.0.conv1.conv.weight"));
    }

    #[test]
    fn group_names_parse() {
        assert_eq!("cn".parse::<ParamGroup>().expect("cn"), ParamGroup::Cn);
        assert!("bn".parse::<ParamGroup>().is_err());
    }
}
