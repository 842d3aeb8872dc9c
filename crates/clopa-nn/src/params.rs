//! Named parameter storage where a chosen subset is trainable.
//!
//! Training tunes one parameter group (a few thousand scalars out of 10^8). Frozen parameters
//! are plain tensors: candle records no op for a computation whose inputs are all non-variables,
//! so nothing upstream of the first trainable tensor is kept for backprop, and a frozen weight
//! gets no gradient of its own. Trainable parameters are [`Var`]s; the network holds their
//! tensors (which share storage with the `Var`), so an optimiser step is seen by the next forward
//! pass without rebuilding the network.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::VarBuilder;

use crate::error::{NnError, Result};

/// Canonical name → tensor, with a trainable subset held as [`Var`]s.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    frozen: BTreeMap<String, Tensor>,
    vars: BTreeMap<String, Var>,
}

impl ParamStore {
    /// All parameters frozen.
    pub fn new(tensors: BTreeMap<String, Tensor>) -> Self {
        ParamStore {
            frozen: tensors,
            vars: BTreeMap::new(),
        }
    }

    /// Turns the named parameters into trainable [`Var`]s (a copy of their values). Unknown names
    /// are an error so a misspelt group cannot silently train nothing.
    pub fn make_trainable<S: AsRef<str>>(
        &mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<()> {
        for name in names {
            let name = name.as_ref();
            if self.vars.contains_key(name) {
                continue;
            }
            let t = self.frozen.remove(name).ok_or_else(|| {
                NnError::Arch(format!("cannot make `{name}` trainable: no such parameter"))
            })?;
            self.vars.insert(name.to_string(), Var::from_tensor(&t)?);
        }
        Ok(())
    }

    /// Moves every parameter to `device` (trainable ones stay trainable, as new `Var`s there).
    ///
    /// Train on a GPU only after this: a network built from a store on another device gets
    /// copies of the `Var`s, which the optimiser's in-place updates would never reach.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        for t in self.frozen.values_mut() {
            if !t.device().same_device(device) {
                *t = t.to_device(device)?;
            }
        }
        for v in self.vars.values_mut() {
            if !v.as_tensor().device().same_device(device) {
                *v = Var::from_tensor(&v.as_tensor().to_device(device)?)?;
            }
        }
        Ok(())
    }

    /// Turns every trainable parameter back into a plain tensor (its current value).
    pub fn freeze_all(&mut self) {
        for (name, var) in std::mem::take(&mut self.vars) {
            self.frozen.insert(name, var.as_tensor().detach());
        }
    }

    /// The trainable parameters, sorted by name (hand these to the optimiser).
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Number of parameters (tensors), trainable or not.
    pub fn len(&self) -> usize {
        self.frozen.len() + self.vars.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current value of one parameter.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.vars
            .get(name)
            .map(|v| v.as_tensor().detach())
            .or_else(|| self.frozen.get(name).cloned())
    }

    /// Current values of every parameter, detached (e.g. to save a model).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = self.frozen.clone();
        for (k, v) in &self.vars {
            out.insert(k.clone(), v.as_tensor().detach());
        }
        out
    }

    /// Current values of the trainable parameters only (what an episode checkpoint holds).
    pub fn trainable_tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Overwrites parameter values (e.g. from an episode checkpoint); names must exist and shapes match.
    pub fn set(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if let Some(var) = self.vars.get(name) {
            check_shape(name, var.as_tensor(), value)?;
            var.set(&value.to_dtype(var.dtype())?)?;
        } else if let Some(t) = self.frozen.get_mut(name) {
            check_shape(name, t, value)?;
            *t = value.to_dtype(t.dtype())?;
        } else {
            return Err(NnError::Arch(format!(
                "cannot set `{name}`: no such parameter"
            )));
        }
        Ok(())
    }

    /// A candle-nn [`VarBuilder`] over this store: layers built from it get the `Var` tensors of
    /// trainable parameters and the plain tensors of the rest, shapes checked by name.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        self.builder(device, false)
    }

    /// Like [`ParamStore::var_builder`], but every parameter is handed out detached: a network
    /// built from it records no backward graph (validation, inference) while still seeing each
    /// optimiser step, because a detached tensor shares the `Var`'s storage.
    pub fn detached_var_builder(&self, device: &Device) -> VarBuilder<'static> {
        self.builder(device, true)
    }

    fn builder(&self, device: &Device, detached: bool) -> VarBuilder<'static> {
        let mut map: HashMap<String, Tensor> = self
            .frozen
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &self.vars {
            let t = v.as_tensor();
            map.insert(k.clone(), if detached { t.detach() } else { t.clone() });
        }
        VarBuilder::from_backend(Box::new(StoreBackend { map }), DType::F32, device.clone())
    }
}

fn check_shape(name: &str, current: &Tensor, value: &Tensor) -> Result<()> {
    if current.dims() != value.dims() {
        return Err(NnError::ShapeMismatch {
            path: "<parameters>".into(),
            tensor: name.to_string(),
            expected: current.dims().to_vec(),
            found: value.dims().to_vec(),
        });
    }
    Ok(())
}

struct StoreBackend {
    map: HashMap<String, Tensor>,
}

impl candle_nn::var_builder::SimpleBackend for StoreBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "parameter `{name}` has shape {:?}, the architecture needs {:?}",
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .map
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("parameter `{name}` is missing")))?;
        // Only convert when needed: a conversion would detach a Var's tensor from its storage.
        let t = if t.dtype() == dtype {
            t.clone()
        } else {
            t.to_dtype(dtype)?
        };
        if t.device().same_device(dev) {
            Ok(t)
        } else {
            t.to_device(dev)
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainable_params_share_storage_with_the_builder() -> Result<()> {
        let dev = Device::Cpu;
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), Tensor::zeros(3, DType::F32, &dev)?);
        m.insert("b".to_string(), Tensor::ones(2, DType::F32, &dev)?);
        let mut store = ParamStore::new(m);
        store.make_trainable(["a"])?;
        let vb = store.var_builder(&dev);
        let a = vb.get(3, "a")?;
        let b = vb.get(2, "b")?;
        assert!(a.is_variable());
        assert!(!b.is_variable());
        // already there: the Vars stay the ones the builder handed out
        store.to_device(&dev)?;
        store.vars()["a"].set(&Tensor::new(&[1f32, 2., 3.], &dev)?)?;
        assert_eq!(a.to_vec1::<f32>()?, vec![1., 2., 3.]);
        let err = vb.get(4, "b").expect_err("shape");
        assert!(err.to_string().contains("`b`"), "{err}");
        assert!(store.make_trainable(["nope"]).is_err());
        Ok(())
    }

    #[test]
    fn detached_builder_tracks_nothing_but_sees_updates() -> Result<()> {
        let dev = Device::Cpu;
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), Tensor::zeros(3, DType::F32, &dev)?);
        let mut store = ParamStore::new(m);
        store.make_trainable(["a"])?;
        let a = store.detached_var_builder(&dev).get(3, "a")?;
        assert!(!a.is_variable());
        store.vars()["a"].set(&Tensor::new(&[4f32, 5., 6.], &dev)?)?;
        assert_eq!(a.to_vec1::<f32>()?, vec![4., 5., 6.]);
        // no graph: a loss computed from it has no gradient path to the Var
        let grads = (a.sqr()?.sum_all()?).backward()?;
        assert!(grads.get(store.vars()["a"].as_tensor()).is_none());
        Ok(())
    }
}
