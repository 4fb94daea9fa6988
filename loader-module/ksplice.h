/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Tables that tie the hand-written update template (ksplice.c) to the part
 * the builder generates for each update (ksplice_update.c, written by
 * builder/src/module/generate.rs).  Change both together.
 */
#ifndef _KSPLICE_H
#define _KSPLICE_H

#include <linux/livepatch.h>
#include <linux/types.h>

/* A byte range of a function that may legitimately differ at run time. */
struct ksplice_skip {
	u32 offset;
	u32 len;
};

/* How a relocated field derives from symbol S, addend A and its address P. */
enum ksplice_reloc_kind {
	KSPLICE_RELOC_PC32,	/* R_X86_64_PC32, _PLT32: s32 S + A - P */
	KSPLICE_RELOC_32S,	/* R_X86_64_32S: s32 S + A, sign-extended */
	KSPLICE_RELOC_32,	/* R_X86_64_32: u32 S + A, zero-extended */
	KSPLICE_RELOC_64,	/* R_X86_64_64: S + A */
};

/*
 * A relocation field of the pre code whose live value run-pre checks: S is
 * the object's slot @slot, which the module loader or the livepatch core
 * filled with the symbol's address in the running kernel.  The field's bytes
 * are also in a skip range: only its value is compared.
 */
struct ksplice_reloc {
	u32 offset;
	u32 kind;		/* enum ksplice_reloc_kind */
	u32 slot;
	s64 addend;
};

/*
 * Run-pre data of one replaced function: the pre build's code, the ranges
 * (relocation fields, the ftrace entry, sites the kernel rewrites at boot or
 * run time) to leave out of the byte comparison, and the relocations whose
 * values are checked instead.
 */
struct ksplice_run_pre {
	const u8 *code;
	u32 size;
	const struct ksplice_skip *skip;
	u32 nr_skip;
	const struct ksplice_reloc *relocs;
	u32 nr_relocs;
};

/* Patch-author callbacks of one object, each list NULL-terminated or NULL. */
struct ksplice_hooks {
	int (*const *pre_patch)(struct klp_object *obj);
	void (*const *post_patch)(struct klp_object *obj);
	void (*const *pre_unpatch)(struct klp_object *obj);
	void (*const *post_unpatch)(struct klp_object *obj);
};

/*
 * What the template needs besides the klp_object at the same index.  @slots
 * holds one address per symbol the run-pre relocations refer to; each entry
 * is relocated against the symbol (R_X86_64_64, through .klp.rela sections
 * for unexported ones), so it is written before this object's pre_patch
 * callback runs.
 */
struct ksplice_object {
	const struct ksplice_run_pre *run_pre;	/* one per klp_func, same order */
	unsigned int nr_funcs;
	const unsigned long *slots;
	const char *const *slot_names;		/* for messages, same order */
	unsigned int nr_slots;
	struct ksplice_hooks hooks;
};

/* Generated: terminated by an empty entry, as klp_patch.objs must be. */
extern struct klp_object ksplice_klp_objects[];
/* Generated: ksplice_nr_objects entries, index i describes object i. */
extern const struct ksplice_object ksplice_objects[];
extern const unsigned int ksplice_nr_objects;
/* Generated: true for a cumulative update (klp_patch.replace). */
extern const bool ksplice_replace;

#endif /* _KSPLICE_H */
