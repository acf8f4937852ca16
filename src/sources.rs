//! Configuration sources. Sources only read and parse: each turns what it reads into
//! [`crate::model::Object`]s and diagnostics and hands a whole [`crate::model::ConfigSet`]
//! to the model — a clone of a set the source keeps and patches with each change, so
//! what the model receives shares every kind the change did not touch
//! ([`crate::model::objects::ObjectMap`]).

pub mod file;
pub mod kube;
pub mod yaml;
