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

/*
 * Run-pre data of one replaced function: the pre build's code and the ranges
 * (relocation fields, the ftrace entry, sites the kernel rewrites at boot or
 * run time) to leave out of the comparison.
 */
struct ksplice_run_pre {
	const u8 *code;
	u32 size;
	const struct ksplice_skip *skip;
	u32 nr_skip;
};

/* Patch-author callbacks of one object, each list NULL-terminated or NULL. */
struct ksplice_hooks {
	int (*const *pre_patch)(struct klp_object *obj);
	void (*const *post_patch)(struct klp_object *obj);
	void (*const *pre_unpatch)(struct klp_object *obj);
	void (*const *post_unpatch)(struct klp_object *obj);
};

/* What the template needs besides the klp_object at the same index. */
struct ksplice_object {
	const struct ksplice_run_pre *run_pre;	/* one per klp_func, same order */
	unsigned int nr_funcs;
	struct ksplice_hooks hooks;
};

/* Generated: terminated by an empty entry, as klp_patch.objs must be. */
extern struct klp_object ksplice_klp_objects[];
/* Generated: ksplice_nr_objects entries, index i describes object i. */
extern const struct ksplice_object ksplice_objects[];
extern const unsigned int ksplice_nr_objects;

#endif /* _KSPLICE_H */
